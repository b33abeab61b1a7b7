"""The state service: sessions, scoped JSON state, versions, watch, history and event logs."""
