"""The test suite. `REAL_SECRET` passes production's checks on secrets (length, variety)."""

REAL_SECRET = "tq3-Vb8_Lk2Zr9Xe4WmJ-5pYhN0sGd7C"
