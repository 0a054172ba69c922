"""Types of the compiled module built from _clipped_box.c (`image` and `out`: objects with a buffer)."""

def clipped_box_means(image: object, rows: int, cols: int, code: str, factor: int, low: int, high: int,
                      out: object) -> None: ...
