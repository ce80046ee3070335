"""Dispatchers: one interface, one module per backend."""

from orchestrator.dispatch.base import DispatchError, Dispatcher, Step

__all__ = ["DispatchError", "Dispatcher", "Step"]
