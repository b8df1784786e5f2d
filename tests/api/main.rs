//! One integration-test binary: the real server over real HTTP, on SQLite and on
//! PostgreSQL (each test gets its own database).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod abuse;
mod accounts;
mod admin;
mod browser;
mod cli;
mod clients;
mod dpop;
mod edge;
mod enumeration;
mod exposure;
mod faults;
mod generated;
mod hardening;
mod hostile;
mod invariants;
mod lifecycle;
mod logs;
mod neighbours;
mod one_row;
mod openapi;
mod outage;
mod production;
mod races;
mod refresh;
mod scaleout;
mod services;
mod session_cap;
mod sessions;
mod slow_clients;
mod throttle;
mod tls;
mod tokens;
mod transport;
