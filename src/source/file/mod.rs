//! Standalone routes files: WsRoute YAML documents and Ocelot's ocelot.json.
