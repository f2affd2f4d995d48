//! Who may connect: one user and password from the environment, checked with SCRAM-SHA-256
//! (the password never crosses the wire, and PostgreSQL clients use it by default).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth, SCRAM_ITERATIONS};
use pgwire::api::auth::{AuthSource, LoginInfo, Password};
use pgwire::error::{PgWireError, PgWireResult};
use rand::RngCore;

use crate::config::SqlEndpointConfig;

/// The user name when `sql_endpoint.user_env` is unset.
pub const DEFAULT_USER: &str = "campaign";

/// Credentials could not be read from the environment.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The password variable is unset or empty.
    #[error(
        "set {variable} to the password SQL clients log in with (sql_endpoint.password_env), \
         or set sql_endpoint.enabled: false"
    )]
    MissingPassword { variable: String },
    /// The user variable is set but empty.
    #[error("{variable} is set but empty (sql_endpoint.user_env)")]
    EmptyUser { variable: String },
}

/// The one login of the endpoint, kept only as its salted SCRAM key.
pub struct Credentials {
    user: String,
    salt: Vec<u8>,
    salted_password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads the user and password named by the settings from the environment.
    pub fn from_env(settings: &SqlEndpointConfig) -> Result<Self, CredentialsError> {
        let user = match std::env::var(&settings.user_env) {
            Ok(user) if user.is_empty() => {
                return Err(CredentialsError::EmptyUser {
                    variable: settings.user_env.clone(),
                })
            }
            Ok(user) => user,
            Err(_) => DEFAULT_USER.to_string(),
        };
        let password = std::env::var(&settings.password_env)
            .ok()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| CredentialsError::MissingPassword {
                variable: settings.password_env.clone(),
            })?;
        Ok(Self::new(user, &password))
    }

    /// A login with this user name and password.
    pub fn new(user: String, password: &str) -> Self {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salted_password = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Self {
            user,
            salt,
            salted_password,
        }
    }

    /// The user name clients log in with.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The SCRAM exchange of one connection (SCRAM state is per connection).
    pub fn scram(self: &Arc<Self>) -> ScramAuth {
        let mut scram = ScramAuth::new(self.clone());
        scram.set_iterations(SCRAM_ITERATIONS);
        scram
    }
}

#[async_trait]
impl AuthSource for Credentials {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        match login.user() {
            Some(user) if user == self.user => Ok(Password::new(
                Some(self.salt.clone()),
                self.salted_password.clone(),
            )),
            other => {
                tracing::warn!(
                    "SQL endpoint: login as unknown user {:?} from {} refused",
                    other.unwrap_or(""),
                    login.host()
                );
                Err(PgWireError::InvalidPassword(
                    other.unwrap_or_default().to_string(),
                ))
            }
        }
    }
}
