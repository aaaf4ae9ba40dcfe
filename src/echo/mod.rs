//! The built-in echo backend (`wsgate echo`): WebSocket and HTTP echo for the demo, tests and e2e.
