//! Issue 18 regression tests: neighbours.
