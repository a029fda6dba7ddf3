"""The agent runtime executed by RQ workers (steps, backends, tools)."""
