"""Thin Litestar controllers, one per resource; business logic lives in the domain packages."""
