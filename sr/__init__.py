"""Result objects sent back to the PACS: the TID 1500 Comprehensive 3D SR."""
