//! Issue 18 regression tests: slow_clients.
