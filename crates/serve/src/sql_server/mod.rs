//! The read-only PostgreSQL-wire SQL endpoint over a pipeline's tables, for BI tools (Superset,
//! Grafana, Metabase, DBeaver), psql and notebooks.
//!
//! datafusion-postgres speaks the protocol over the same DataFusion session `query` uses,
//! with PostgreSQL's `pg_catalog` and functions for the catalog queries clients send on
//! connect; this module adds what a shared, exposed endpoint needs: a login, TLS, refusal of
//! anything but reads, per-statement limits (time, rows; memory comes with `query`'s session),
//! a cap on connections, threads of its own below the pipeline's priority, PostgreSQL's error
//! codes for its refusals, and the catalog BI tools' table browsers read (`pg_compat`).

pub mod auth;
mod catalog;
pub mod errors;
pub mod guard;
pub mod limits;
mod pg_compat;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, QueryHook};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{DefaultServerParameterProvider, StartupHandler};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{ConnectionManager, ErrorHandler, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::catalog::CATALOG_NAME;
use crate::config::{Config, PipelineConfig, SqlEndpointConfig};
use crate::query::QueryError;

pub use auth::Credentials;
use catalog::ServedCatalog;
use limits::{ApplyLimits, StatementLimits};

/// Why the endpoint could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum SqlServerError {
    /// The login could not be read from the environment.
    #[error(transparent)]
    Credentials(#[from] auth::CredentialsError),
    /// The tables' catalog could not be opened.
    #[error("opening the tables for the SQL endpoint")]
    Session(#[source] QueryError),
    /// PostgreSQL's catalog tables could not be set up.
    #[error("setting up pg_catalog")]
    PgCatalog(#[source] Box<datafusion::error::DataFusionError>),
    /// The TLS certificate or key cannot serve.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The threads that run the statements could not be started.
    #[error("starting the SQL endpoint's statement threads")]
    Threads(#[source] std::io::Error),
    /// The address could not be bound.
    #[error("SQL endpoint cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, ready SQL endpoint; [`SqlServer::serve`] accepts connections.
pub struct SqlServer {
    listener: TcpListener,
    /// Set when `sql_endpoint.tls` is: clients may then ask for TLS (`sslmode=require`).
    tls: Option<pgwire::tokio::TlsAcceptor>,
    /// Where connections and their statements run: threads of their own, below the
    /// pipeline's priority, so that in `run --sql` a heavy statement takes CPU the pipeline
    /// leaves over, never the pipeline's own.
    statements: StatementThreads,
    handlers: Arc<Handlers>,
    connections: Arc<Semaphore>,
    max_connections: usize,
}

impl SqlServer {
    /// Reads the login, opens the tables and binds `listen`: every error surfaces here,
    /// before any client is served.
    pub async fn bind(
        config: &Config,
        pipeline: &PipelineConfig,
        listen: SocketAddr,
    ) -> Result<Self, SqlServerError> {
        let credentials = Credentials::from_env(&config.sql_endpoint)?;
        Self::bind_with(config, pipeline, listen, credentials).await
    }

    /// [`SqlServer::bind`] with the login given (the bench's own).
    pub async fn bind_with(
        config: &Config,
        pipeline: &PipelineConfig,
        listen: SocketAddr,
        credentials: Credentials,
    ) -> Result<Self, SqlServerError> {
        let settings = &config.sql_endpoint;
        let credentials = Arc::new(credentials);
        let tls = match &settings.tls {
            Some(tls) => Some(tls::acceptor(config, tls)?),
            None => None,
        };
        let require_tls = tls.is_some();
        let ctx = session(config, pipeline, settings).await?;
        let schema = pipeline.sink.namespace.clone();
        let listener =
            TcpListener::bind(listen)
                .await
                .map_err(|source| SqlServerError::Listen {
                    address: listen,
                    source,
                })?;
        Ok(Self {
            listener,
            tls,
            statements: statement_threads().map_err(SqlServerError::Threads)?,
            handlers: Arc::new(Handlers::new(ctx, credentials, schema, require_tls)),
            connections: Arc::new(Semaphore::new(settings.max_connections)),
            max_connections: settings.max_connections,
        })
    }

    /// The user name clients log in with.
    pub fn user(&self) -> &str {
        self.handlers.credentials.user()
    }

    /// The address it listens on (the port, when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves clients, each on its own task, until `shutdown` turns true.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let refuse = Arc::new(Handlers {
            refuse: Some(format!(
                "too many connections: the SQL endpoint serves {} at once \
                 (sql_endpoint.max_connections)",
                self.max_connections
            )),
            ..self.handlers.as_ref().clone()
        });
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let (socket, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("SQL endpoint: accepting a connection: {err}");
                    continue;
                }
            };
            let permit = self.connections.clone().try_acquire_owned().ok();
            let handlers = match permit {
                Some(_) => self.handlers.clone(),
                None => refuse.clone(),
            };
            let tls = self.tls.clone();
            self.statements.spawn(async move {
                let _permit = permit;
                if let Err(err) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    tracing::debug!("SQL endpoint: connection from {peer}: {err}");
                }
            });
        }
    }
}

/// The statements' runtime; dropped without waiting for its threads, which an async context
/// (where the server ends) must not do.
struct StatementThreads(Option<tokio::runtime::Runtime>);

impl StatementThreads {
    fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(runtime) = &self.0 {
            runtime.spawn(task);
        }
    }
}

impl Drop for StatementThreads {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// How much lower than the pipeline the statements' threads run (`nice` steps): the kernel
/// then gives a busy pipeline thread about ten times the CPU of a busy statement thread.
const STATEMENT_NICENESS: libc::c_int = 10;
/// The lowest priority Linux has.
const MAX_NICENESS: libc::c_int = 19;

/// A runtime for the endpoint's connections and their statements, on threads that yield the
/// CPU to the process's other threads.
fn statement_threads() -> std::io::Result<StatementThreads> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("sql-endpoint")
        .enable_all()
        .on_thread_start(|| {
            // On Linux a thread's nice value is its own: `who` is the thread id.
            // SAFETY: plain system calls on the calling thread, no memory passed.
            // Relative to what it inherited, so a runner started under `nice` keeps the gap.
            let outcome = unsafe {
                let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
                let inherited = libc::getpriority(libc::PRIO_PROCESS, thread);
                let lowered = (inherited + STATEMENT_NICENESS).min(MAX_NICENESS);
                libc::setpriority(libc::PRIO_PROCESS, thread, lowered)
            };
            if outcome != 0 {
                tracing::debug!(
                    "SQL endpoint: lowering a statement thread's priority: {}",
                    std::io::Error::last_os_error()
                );
            }
        })
        .build()?;
    Ok(StatementThreads(Some(runtime)))
}

/// The read-only session the endpoint serves: `query`'s session with `pg_catalog` beside the
/// namespaces and the statement limits in every physical plan.
async fn session(
    config: &Config,
    pipeline: &PipelineConfig,
    settings: &SqlEndpointConfig,
) -> Result<Arc<SessionContext>, SqlServerError> {
    let base = crate::query::session(config, pipeline)
        .await
        .map_err(SqlServerError::Session)?;
    let limits = StatementLimits {
        timeout: settings.statement_timeout,
        max_rows: settings.max_result_rows,
    };
    let state = SessionStateBuilder::new_from_existing(base.state())
        .with_physical_optimizer_rule(Arc::new(ApplyLimits(limits)))
        .with_analyzer_rules(pg_compat::BooleanLiterals::with_default_rules())
        .build();
    let ctx = SessionContext::new_with_state(state);
    if let Some(iceberg) = ctx.catalog(CATALOG_NAME) {
        ctx.register_catalog(CATALOG_NAME, Arc::new(ServedCatalog::new(iceberg)));
    }
    setup_pg_catalog(&ctx, CATALOG_NAME, EmptyContextProvider)
        .map_err(SqlServerError::PgCatalog)?;
    pg_compat::extend(&ctx, CATALOG_NAME)
        .await
        .map_err(|e| SqlServerError::PgCatalog(Box::new(e)))?;
    ctx.register_udf(constant_udf("version", version()));
    // The namespace is the session's default schema: unqualified names resolve in it.
    ctx.register_udf(constant_udf(
        "current_schema",
        pipeline.sink.namespace.clone(),
    ));
    Ok(Arc::new(ctx))
}

/// `version()` in PostgreSQL's form: clients (SQLAlchemy's dialect, and so Superset) parse the
/// server version out of it and refuse to connect when it does not start so.
fn version() -> String {
    format!(
        "PostgreSQL {POSTGRES_VERSION} on campaign-pipeline {} (Apache DataFusion {}, read-only)",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION
    )
}

/// A function of no arguments that returns `value`.
fn constant_udf(name: &str, value: String) -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
    use datafusion::scalar::ScalarValue;
    create_udf(
        name,
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                value.clone(),
            ))))
        }),
    )
}

/// The PostgreSQL version the endpoint reports (pgwire's `server_version` parameter): what its
/// SQL and catalog answer like, closely enough for clients' feature checks.
const POSTGRES_VERSION: &str = "16.6";

/// What serves one connection: login, then the read-only query handlers.
#[derive(Clone)]
struct Handlers {
    service: Arc<DfSessionService>,
    credentials: Arc<Credentials>,
    parameters: Arc<DefaultServerParameterProvider>,
    connections: Arc<ConnectionManager>,
    cancel: Arc<DefaultCancelHandler>,
    /// Set when the connection is over the limit: it is told so at startup.
    refuse: Option<String>,
    /// Whether connections without TLS are refused (TLS is configured).
    require_tls: bool,
}

impl Handlers {
    fn new(
        ctx: Arc<SessionContext>,
        credentials: Arc<Credentials>,
        schema: String,
        require_tls: bool,
    ) -> Self {
        // The guard goes first so no later hook (SET's fallback runs DataFusion statements)
        // sees a refused statement.
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(guard::ReadOnly),
            Arc::new(pg_compat::PgCompat),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.default_transaction_read_only = true;
        parameters.is_superuser = false;
        parameters.server_version = POSTGRES_VERSION.to_string();
        parameters.search_path = schema;
        let connections = Arc::new(ConnectionManager::new());
        Self {
            service: Arc::new(DfSessionService::new_with_hooks(ctx, hooks)),
            credentials,
            parameters: Arc::new(parameters),
            cancel: Arc::new(DefaultCancelHandler::new(connections.clone())),
            connections,
            refuse: None,
            require_tls,
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        // One handler per connection: the SCRAM exchange keeps its state in it.
        Arc::new(Startup {
            login: SASLAuthStartupHandler::new(self.parameters.clone())
                .with_scram(self.credentials.scram())
                .with_connection_manager(self.connections.clone()),
            refuse: self.refuse.clone(),
            require_tls: self.require_tls,
        })
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(errors::EndpointErrors)
    }
}

/// SCRAM login, or a refusal when the endpoint is full or the client did not ask for TLS
/// where it is configured.
struct Startup {
    login: SASLAuthStartupHandler<DefaultServerParameterProvider>,
    refuse: Option<String>,
    require_tls: bool,
}

#[async_trait::async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: pgwire::messages::PgWireFrontendMessage,
    ) -> pgwire::error::PgWireResult<()>
    where
        C: pgwire::api::ClientInfo
            + futures::Sink<pgwire::messages::PgWireBackendMessage>
            + Unpin
            + Send
            + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as futures::Sink<pgwire::messages::PgWireBackendMessage>>::Error>,
    {
        if let Some(reason) = &self.refuse {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "53300".into(),
                reason.clone(),
            ))));
        }
        // Configuring a certificate is asking that logins and rows never cross in plain text.
        if self.require_tls && !client.is_secure() {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "the SQL endpoint requires TLS (sql_endpoint.tls): connect with sslmode=require"
                    .into(),
            ))));
        }
        self.login.on_startup(client, message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's nice value.
    fn niceness() -> libc::c_int {
        // SAFETY: plain system calls on the calling thread, no memory passed.
        unsafe {
            let thread = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::getpriority(libc::PRIO_PROCESS, thread)
        }
    }

    #[test]
    fn statements_run_on_threads_below_the_pipelines_priority() {
        let own = niceness();
        let threads = statement_threads().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        threads.spawn(async move {
            let _ = tx.send(niceness());
        });
        let seen = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(seen, (own + STATEMENT_NICENESS).min(MAX_NICENESS));
        assert_eq!(niceness(), own, "the caller's own thread is untouched");
    }
}
