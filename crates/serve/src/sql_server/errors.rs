//! PostgreSQL error codes for the endpoint's own refusals, so that clients can tell a statement
//! that ran out of memory or time from a bug (datafusion-postgres reports every execution error
//! as `XX000`, internal error).

use datafusion::error::DataFusionError;
use datafusion_postgres::pgwire;
use pgwire::api::{ClientInfo, ErrorHandler};
use pgwire::error::{ErrorInfo, PgWireError};

use super::limits::LimitExceeded;

/// PostgreSQL's `out_of_memory`.
pub const OUT_OF_MEMORY_CODE: &str = "53200";
/// PostgreSQL's `query_canceled` (a statement timeout).
pub const QUERY_CANCELED_CODE: &str = "57014";
/// PostgreSQL's `program_limit_exceeded`.
pub const LIMIT_EXCEEDED_CODE: &str = "54000";

/// Rewrites execution errors the endpoint caused on purpose into their PostgreSQL codes.
#[derive(Debug, Default)]
pub struct EndpointErrors;

impl ErrorHandler for EndpointErrors {
    fn on_error<C: ClientInfo>(&self, _client: &C, error: &mut PgWireError) {
        let PgWireError::ApiError(source) = &*error else {
            return;
        };
        if let Some(info) = classify(source.as_ref()) {
            *error = PgWireError::UserError(Box::new(info));
        }
    }
}

/// The PostgreSQL error for an execution error the endpoint's bounds raised, if it is one.
fn classify(error: &(dyn std::error::Error + 'static)) -> Option<ErrorInfo> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = next {
        if let Some(exceeded) = current.downcast_ref::<LimitExceeded>() {
            let code = match exceeded {
                LimitExceeded::Timeout(_) => QUERY_CANCELED_CODE,
                LimitExceeded::TooManyRows(_) => LIMIT_EXCEEDED_CODE,
            };
            return Some(info(code, exceeded.to_string()));
        }
        if let Some(err) = current.downcast_ref::<DataFusionError>() {
            // The statement's memory bounds word their refusals, naming the setting.
            if let DataFusionError::ResourcesExhausted(message) = err.find_root() {
                return Some(info(OUT_OF_MEMORY_CODE, message.clone()));
            }
        }
        next = current.source();
    }
    None
}

fn info(code: &str, message: String) -> ErrorInfo {
    ErrorInfo::new("ERROR".to_string(), code.to_string(), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(error: DataFusionError) -> Option<String> {
        // As the handler sees it: boxed by datafusion-postgres.
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(error);
        classify(boxed.as_ref()).map(|info| info.code)
    }

    #[test]
    fn refusals_get_their_postgres_codes_wherever_they_sit_in_the_chain() {
        let memory = DataFusionError::ResourcesExhausted("out of memory: x".into());
        assert_eq!(code_of(memory).as_deref(), Some(OUT_OF_MEMORY_CODE));
        let wrapped = DataFusionError::Context(
            "sorting".into(),
            Box::new(DataFusionError::Shared(std::sync::Arc::new(
                DataFusionError::ResourcesExhausted("disk".into()),
            ))),
        );
        assert_eq!(code_of(wrapped).as_deref(), Some(OUT_OF_MEMORY_CODE));
        let timeout = DataFusionError::External(Box::new(LimitExceeded::Timeout(
            std::time::Duration::from_secs(1),
        )));
        assert_eq!(code_of(timeout).as_deref(), Some(QUERY_CANCELED_CODE));
        let rows = DataFusionError::External(Box::new(LimitExceeded::TooManyRows(5)));
        assert_eq!(code_of(rows).as_deref(), Some(LIMIT_EXCEEDED_CODE));
        assert_eq!(
            code_of(DataFusionError::Plan("no such column".into())),
            None
        );
    }
}
