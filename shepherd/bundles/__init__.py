"""Offline bundle format: create, sign, verify, safely extract and import (spec: packaging/BUNDLE.md)."""
