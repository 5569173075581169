//! The server's settings: flags, `TESSERA_*` environment variables, and a TOML file
//! (`--config FILE`), in that order of precedence over the built-in defaults.
//!
//! The file's keys are the flags' names without their dashes (`data-dir`, `fsync`,
//! `cache-bytes`); values are TOML strings, integers, floats, booleans, or arrays for lists
//! (`peers`). A setting that a flag or its environment variable (`TESSERA_DATA_DIR`, ...) gives
//! overrides the file. An unknown key, a section, or a bad value stops startup naming the file,
//! the line and the key. The file goes through the same parser as the flags (each of its
//! settings becomes `--key=value` in front of the command line), so a value means the same in
//! both places and nothing is checked twice. `--print-config` prints the effective settings as
//! TOML, one per line, and exits: `ops/tessera.toml` is checked against it.

use std::ffi::OsString;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::cli::Args;

/// Flags that are about the command, not settings of the node: never read from a file.
const NOT_SETTINGS: [&str; 4] = ["config", "print-config", "help", "version"];

/// Parses the command line, the environment and the config file it names. Clap's own errors
/// (and --help, --version) print and exit as clap does; a config file's errors are returned.
pub fn parse(argv: Vec<OsString>) -> Result<Args, String> {
    args_of(&effective(argv)?)
}

/// The command line's matches with the config file's settings (those no flag or environment
/// variable gives) in front of it.
fn effective(argv: Vec<OsString>) -> Result<ArgMatches, String> {
    let matches = command().get_matches_from(argv.clone());
    let Some(path) = matches.get_one::<std::path::PathBuf>("config").cloned() else {
        return Ok(matches);
    };
    let file_args = file_settings(&path, &matches)?;
    let mut combined = vec![argv
        .first()
        .cloned()
        .unwrap_or_else(|| "tessera-server".into())];
    combined.extend(file_args.into_iter().map(OsString::from));
    combined.extend(argv.into_iter().skip(1));
    command()
        .try_get_matches_from(combined)
        .map_err(|e| first_line(&e.to_string()))
}

fn command() -> Command {
    Args::command()
}

fn args_of(matches: &ArgMatches) -> Result<Args, String> {
    Args::from_arg_matches(matches).map_err(|e| first_line(&e.to_string()))
}

/// The file's settings as `--key=value` arguments, leaving out what flags or the environment
/// set; every one checked on its own first, so that an error names its key and line.
fn file_settings(path: &Path, matches: &ArgMatches) -> Result<Vec<String>, String> {
    let file = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {file}: {e}"))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        format!("config file {file}: {}", one_line(&e.to_string()))
    })?;
    let cmd = command();
    let mut out = Vec::new();
    for (key, value) in &table {
        let line = line_of(&text, key);
        let at = |why: String| format!("config file {file}, line {line}: {why}");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && !NOT_SETTINGS.contains(&key.as_str()))
            .ok_or_else(|| {
                at(format!(
                    "unknown setting `{key}` (settings are the flags' names without dashes; \
                     `tessera-server --print-config` lists them)"
                ))
            })?;
        let source = matches.value_source(arg.get_id().as_str());
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue; // a flag or the environment overrides the file
        }
        let setting = as_argument(key, value, arg.get_action()).map_err(&at)?;
        if let Some(setting) = setting {
            command()
                .try_get_matches_from(["tessera-server", setting.as_str()])
                .map_err(|e| at(format!("`{key}`: {}", first_line(&e.to_string()))))?;
            out.push(setting);
        }
    }
    Ok(out)
}

/// `--key=value` for one setting of the file; `None` for a switch that is off.
fn as_argument(
    key: &str,
    value: &toml::Value,
    action: &ArgAction,
) -> Result<Option<String>, String> {
    if matches!(action, ArgAction::SetTrue) {
        return match value {
            toml::Value::Boolean(true) => Ok(Some(format!("--{key}"))),
            toml::Value::Boolean(false) => Ok(None),
            _ => Err(format!("`{key}` is true or false")),
        };
    }
    let text = match value {
        toml::Value::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| format!("`{key}`: {why}"))?
            .join(","),
        other => scalar(other).map_err(|why| format!("`{key}`: {why}"))?,
    };
    Ok(Some(format!("--{key}={text}")))
}

fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Table(_) => Err("settings are top-level keys, not sections".into()),
        other => Err(format!("{} is not a setting's value", other.type_str())),
    }
}

/// The line of `key`'s assignment in the file (1-based), for error messages.
fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix(key)
                .or_else(|| line.strip_prefix(&format!("\"{key}\"")));
            rest.is_some_and(|r| r.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The effective settings as TOML: every setting, one per line; a setting with no value (no
/// default, none given) as a comment.
pub fn print(argv: Vec<OsString>) -> Result<String, String> {
    let matches = effective(argv)?;
    let mut out = String::new();
    for arg in command().get_arguments() {
        let Some(key) = arg.get_long() else {
            continue;
        };
        if NOT_SETTINGS.contains(&key) {
            continue;
        }
        let id = arg.get_id().as_str();
        let line = if matches!(arg.get_action(), ArgAction::SetTrue) {
            format!("{key} = {}", matches.get_flag(id))
        } else {
            match matches.get_raw(id) {
                Some(raw) => {
                    let values: Vec<String> =
                        raw.map(|v| v.to_string_lossy().into_owned()).collect();
                    format!("{key} = {}", toml_value(arg, &values))
                }
                None => format!("# {key} = (not set)"),
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// A setting's value as TOML: lists as arrays, numbers and booleans bare, the rest quoted.
fn toml_value(arg: &clap::Arg, values: &[String]) -> String {
    let quoted = |v: &str| toml::Value::String(v.to_string()).to_string();
    if arg.get_value_delimiter().is_some() {
        let items: Vec<String> = values.iter().map(|v| quoted(v)).collect();
        return format!("[{}]", items.join(", "));
    }
    let value = values.first().map_or("", String::as_str);
    let bare = value.parse::<i64>().is_ok()
        || value == "true"
        || value == "false"
        || (value.parse::<f64>().is_ok() && value.contains('.'));
    if bare {
        value.to_string()
    } else {
        quoted(value)
    }
}
