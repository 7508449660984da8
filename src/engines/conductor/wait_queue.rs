//! The WAIT queue read from Conductor's own PostgreSQL (being written).
