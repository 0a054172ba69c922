"""The DICOM network side: Storage SCP (C-ECHO, C-STORE), the sender (C-STORE SCU), peer checks."""
