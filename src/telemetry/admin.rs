//! The admin listener: `/healthz` (process alive), `/readyz` (ready for traffic: a table is
//! loaded and no shutdown is under way) and `/metrics` (Prometheus text).
