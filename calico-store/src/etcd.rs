//! The etcd v3 backend. TO BE WRITTEN by the etcd helper.
pub struct EtcdStore;
impl EtcdStore {
    pub fn connect(_cfg: &crate::DatastoreConfig) -> Result<crate::config::Unimplemented, crate::StoreError> {
        Err(crate::StoreError::Config("etcd store not written yet".into()))
    }
}
