//! `vch config decode|encode`: VIC's guestinfo keys and the config as JSON, both ways (for
//! people and tools; the tether itself never needs JSON).

use std::io::Read as _;
use std::path::Path;

use tether_proto::config::ExecutorConfig;
use tether_proto::extraconfig::KeyValues;
use tether_proto::guestinfo::vmx;

/// A failure of a `config` command; the message names the line or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigCmdError {
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Parse {
        what: String,
        source: vmx::ParseError,
    },
    #[error("{what}: {source}")]
    Decode {
        what: String,
        source: tether_proto::extraconfig::CodecError,
    },
    #[error("{what}: not a config in JSON: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
}

fn read_input(file: Option<&Path>) -> Result<(String, String), ConfigCmdError> {
    let what = file.map_or("standard input".to_string(), |p| p.display().to_string());
    let mut text = String::new();
    let result = match file {
        Some(p) => std::fs::read_to_string(p).map(|t| text = t),
        None => std::io::stdin().read_to_string(&mut text).map(drop),
    };
    result.map_err(|source| ConfigCmdError::Read {
        what: what.clone(),
        source,
    })?;
    Ok((what, text))
}

/// Decodes key/value lines into the config. Returns the JSON text and the decoder's warnings.
pub fn decode(file: Option<&Path>) -> Result<(String, Vec<String>), ConfigCmdError> {
    let (what, text) = read_input(file)?;
    let pairs = vmx::parse(&text).map_err(|source| ConfigCmdError::Parse {
        what: what.clone(),
        source,
    })?;
    let mut kv: KeyValues = pairs.into_iter().collect();
    let (cfg, warnings) = ExecutorConfig::decode(&mut kv)
        .map_err(|source| ConfigCmdError::Decode { what, source })?;
    let json = serde_json::to_string_pretty(&cfg).unwrap_or_default();
    Ok((json + "\n", warnings))
}

/// Encodes a JSON config into key/value lines sorted by key.
pub fn encode(file: Option<&Path>) -> Result<String, ConfigCmdError> {
    let (what, text) = read_input(file)?;
    let cfg: ExecutorConfig =
        serde_json::from_str(&text).map_err(|source| ConfigCmdError::Json { what, source })?;
    let pairs = cfg.encode();
    Ok(vmx::render(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
}
