//! Issue 18 regression tests: edge.
