"""DICOM pixels to model input, EfficientNet-B4 models and their cards, scoring; training lives in
`inference.training`, apart from the run-time path."""
