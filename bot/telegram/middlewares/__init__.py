"""Middlewares run for every update, in this order: access, database session, user record."""
