"""Dispatchers: one interface, one module per backend."""

from orchestrator.dispatch.base import Delivery, Dispatcher, DispatchError, Held

__all__ = ["Delivery", "DispatchError", "Dispatcher", "Held"]
