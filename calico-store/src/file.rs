//! The embedded file store (single-node default). TO BE WRITTEN by the IPAM/store helper.
use std::path::PathBuf;
pub struct FileStore;
impl FileStore {
    pub fn open(_dir: PathBuf) -> Result<crate::config::Unimplemented, crate::StoreError> {
        Err(crate::StoreError::Config("file store not written yet".into()))
    }
}
