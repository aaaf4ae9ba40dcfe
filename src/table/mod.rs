//! compile(model) -> RouteTable: templates, matching, priorities; atomic publication.
