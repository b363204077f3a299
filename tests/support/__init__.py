"""Helpers for tests that run the real ``marketcare`` command in other processes."""
