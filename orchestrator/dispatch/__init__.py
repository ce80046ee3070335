"""Dispatchers: one interface, one module per backend."""

from orchestrator.dispatch.base import Dispatcher, DispatchError, Step

__all__ = ["DispatchError", "Dispatcher", "Step"]
