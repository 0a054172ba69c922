"""DIMSE status codes, named: a bare 0x210 where 0xC210 was meant is a real bug class."""

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # storage: refused, out of resources (disk full, I/O error)
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000  # storage: the dataset cannot be parsed or lacks what it must have

# Association rejection (result, source, reason) triples, PS3.8 9.3.4.
REJECT_CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
REJECT_CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
REJECT_NO_REASON = (0x01, 0x01, 0x01)
REJECT_LIMIT_REACHED = (0x02, 0x03, 0x02)  # transient: local limit exceeded
REJECT_USER_IDENTITY = (0x02, 0x02, 0x01)  # transient, ACSE, no reason: what pynetdicom answers a failed identity


def is_success(status: int) -> bool:
    """Success or warning: the peer has the instance."""
    return status == SUCCESS or 0xB000 <= status <= 0xBFFF or status == 0x0107 or status == 0x0116


def is_retryable(status: int) -> bool:
    """Refused for a passing reason (out of resources): try again later."""
    return 0xA700 <= status <= 0xA7FF
