"""marketcare: sanitation compliance for municipal farmers' markets."""

from __future__ import annotations

__version__ = "0.1.0"
