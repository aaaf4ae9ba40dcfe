//! Kubernetes source: reflectors over WsRoutes, EndpointSlices and Services, status writer.
