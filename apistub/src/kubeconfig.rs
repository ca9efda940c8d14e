//! The kubeconfig that points child processes at the stub.

use std::{fs, io::Write, path::Path};

use crate::error::StartError;

/// No credentials: the stub does not authenticate, and an empty user keeps kube from
/// looking for any.
fn render(url: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: plinth-apistub
  cluster:
    server: {url}
contexts:
- name: plinth-apistub
  context:
    cluster: plinth-apistub
    user: plinth-apistub
current-context: plinth-apistub
users:
- name: plinth-apistub
  user: {{}}
preferences: {{}}
"
    )
}

/// Written beside the target and renamed over it, so a process polling for the file never
/// reads half of it.
pub fn write(path: &Path, url: &str) -> Result<(), StartError> {
    let fail = |source| StartError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = fs::File::create(&tmp).map_err(fail)?;
    file.write_all(render(url).as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    fs::rename(&tmp, path).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        write(&path, "http://127.0.0.1:4321").unwrap();
        let config = kube::config::Kubeconfig::read_from(&path).unwrap();
        assert_eq!(config.current_context.as_deref(), Some("plinth-apistub"));
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("http://127.0.0.1:4321"));
    }
}
