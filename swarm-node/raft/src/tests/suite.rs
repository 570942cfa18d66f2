//! openraft's storage conformance suite, run against the real stores in a temp dir.

use openraft::testing::{StoreBuilder, Suite};

use crate::log_store::LogStore;
use crate::state_machine::StateMachineStore;
use crate::typ::StorageError;
use crate::TypeConfig;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let key = crate::at_rest::tests::key_in(dir.path());
        let log = LogStore::open(dir.path(), key.clone()).await?;
        let sm = StateMachineStore::open(dir.path(), key).await?;
        Ok((dir, log, sm))
    }
}

// A plain test, not a tokio one: the suite starts a runtime per case.
#[test]
fn stores_pass_the_openraft_suite() {
    if let Err(e) = Suite::test_all(Builder) {
        panic!("storage suite: {e}");
    }
}
