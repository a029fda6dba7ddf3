"""The agent HTTP API under /api/v1/ (django-ninja); see endpoints.py."""
