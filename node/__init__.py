"""The application that wires dfnode together: config, database, routing, jobs, CLI."""
