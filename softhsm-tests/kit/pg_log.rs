//! An anchorlog log on a real PostgreSQL server ([`super::postgres::PgServer`]): the owner and application roles,
//! the database and the schema, as docs/HA.md sets them up. An appliance given [`PgLog::app_url`] in
//! `Options::postgres` serves it (`[storage] backend = "postgres"`).

use super::postgres::{PgServer, SUPERUSER};
use anchorlog::store::pg::{self, schema, PgConnect};

/// The owner role (creates the schema).
pub const OWNER: &str = "anchorlog_owner";
/// The application role (what the appliance connects as).
pub const APP: &str = "anchorlog_app";
/// The database.
pub const DB: &str = "anchorlog";

/// A PostgreSQL server holding one empty log of `origin`, its schema installed and granted to [`APP`].
pub struct PgLog {
    /// The server (stopped and removed on drop).
    pub server: PgServer,
}

impl PgLog {
    /// Starts a server and creates the roles, the database and the schema for a log of `origin`.
    pub async fn create(origin: &str) -> PgLog {
        let server = PgServer::start();
        let su = pg::connect(&PgConnect::plain(server.url(SUPERUSER, "postgres"))).await.expect("superuser");
        su.batch_execute(&format!("CREATE ROLE {OWNER} LOGIN; CREATE ROLE {APP} LOGIN;")).await.unwrap();
        su.batch_execute(&format!("CREATE DATABASE {DB} OWNER {OWNER}")).await.unwrap();
        let mut owner = pg::connect(&PgConnect::plain(server.url(OWNER, DB))).await.expect("owner");
        schema::install(&mut owner, origin).await.expect("schema");
        schema::grant_app(&owner, APP).await.expect("grant");
        PgLog { server }
    }

    /// `postgres://anchorlog_app@127.0.0.1:PORT/anchorlog`.
    pub fn app_url(&self) -> String {
        self.server.url(APP, DB)
    }

    /// A session as the application role.
    pub async fn app(&self) -> tokio_postgres::Client {
        pg::connect(&PgConnect::plain(self.app_url())).await.expect("app session")
    }
}
