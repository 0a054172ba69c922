"""What every layer shares and nothing else: the error hierarchy and durable file writes. Imports nothing
of the project."""
