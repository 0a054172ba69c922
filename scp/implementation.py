"""Who dfnode says it is: in its A-ASSOCIATE-AC and in the File Meta of every file it spools."""

# A UID under pydicom's root for generated UIDs, generated once for dfnode and fixed since.
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.45911205504922250760136517193023880400"
IMPLEMENTATION_VERSION = "DFNODE_0.1.0"  # SH: at most 16 characters
