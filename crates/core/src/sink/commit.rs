//! The commit protocol of a table that several runners append to: every commit is decided
//! against the exact table state it lands on.
//!
//! iceberg-rust 0.10.1's `Transaction::commit` reloads the table before committing and, on a
//! conflict, reloads it again and re-applies the action with the snapshot summary built before
//! the conflict: offsets merged from an old head would land on a new head without being looked
//! at. [`PinnedCatalog`] stops that: its `load_table` returns the table the commit was validated
//! against, and its `update_table` turns a conflict into an error that is not retried, so the
//! writer's own loop reloads, validates again and rebuilds the summary.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};

/// A catalog whose `load_table` answers with one pinned table state and whose commit
/// conflicts come back to the caller instead of being retried on another base.
#[derive(Debug)]
pub struct PinnedCatalog {
    inner: Arc<dyn Catalog>,
    pinned: Table,
}

impl PinnedCatalog {
    /// Commits through `inner`, against `pinned`.
    pub fn new(inner: Arc<dyn Catalog>, pinned: Table) -> Self {
        Self { inner, pinned }
    }
}

/// Whether an Iceberg error means another writer committed first.
pub fn is_conflict(error: &Error) -> bool {
    error.kind() == ErrorKind::CatalogCommitConflicts
}

#[async_trait]
impl Catalog for PinnedCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        if table == self.pinned.identifier() {
            return Ok(self.pinned.clone());
        }
        self.inner.load_table(table).await
    }

    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.inner.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        self.inner.update_table(commit).await.map_err(|error| {
            if is_conflict(&error) {
                Error::new(
                    ErrorKind::CatalogCommitConflicts,
                    "another writer committed first",
                )
                .with_retryable(false)
                .with_source(error)
            } else {
                error
            }
        })
    }
}
