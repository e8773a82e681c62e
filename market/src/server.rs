//! Serving: the HTTP listener and the engine, together, until shutdown.

use std::sync::Arc;

use tokio::net::TcpListener;

use crate::engine::Node;

/// Serves the API on `listener` and runs the engine until `shutdown` resolves.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let engine = tokio::spawn(node.clone().run_engine());
    let app = crate::api::router(node).layer(tower_http::trace::TraceLayer::new_for_http());
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    engine.abort();
    result
}
