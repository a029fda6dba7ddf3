"""Orchestrator: supervise teams of AI agents that share resources."""
