"""The web console that `dfnode serve` serves: studies, queue and peers, an upload check, /metrics."""
