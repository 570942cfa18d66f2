//! The request bodies DigitalOcean's OpenAPI description requires, for the endpoints the
//! fake serves: required fields, types, enums and nullability. Every body is checked
//! against them before anything else, and a body that breaks them gets DigitalOcean's
//! 422, so a client that sends what the API would refuse fails its tests here first.
//!
//! Written by hand from the specification (the subset swarmup uses), as a small schema
//! language: objects with required and typed properties, arrays, strings with enums,
//! integers, booleans, and the `oneOf`/`anyOf`/`allOf` combinations the API uses.

use serde_json::Value;

/// One schema node.
#[derive(Debug, Clone)]
pub enum Schema {
    /// An object: its required names, and the types of the properties it may have
    /// (properties not listed are accepted, as the specification does not close them).
    Object {
        required: &'static [&'static str],
        props: Vec<(&'static str, Schema)>,
    },
    Array(Box<Schema>),
    Str,
    Enum(&'static [&'static str]),
    Int,
    Bool,
    /// `null` or the inner schema (`nullable: true`).
    Nullable(Box<Schema>),
    /// Exactly one must match (`oneOf`).
    OneOf(Vec<Schema>),
    /// At least one must match (`anyOf`).
    AnyOf(Vec<Schema>),
    /// Every one must match (`allOf`).
    AllOf(Vec<Schema>),
}

use Schema::*;

fn obj(required: &'static [&'static str], props: Vec<(&'static str, Schema)>) -> Schema {
    Object { required, props }
}

fn arr(item: Schema) -> Schema {
    Array(Box::new(item))
}

fn nullable(inner: Schema) -> Schema {
    Nullable(Box::new(inner))
}

/// Checks `value` against `schema`; the error names the first field that is wrong.
pub fn check(schema: &Schema, value: &Value, at: &str) -> Result<(), String> {
    let here = |what: &str| {
        if at.is_empty() {
            what.to_string()
        } else {
            format!("{at}: {what}")
        }
    };
    match schema {
        Nullable(inner) => {
            if value.is_null() {
                Ok(())
            } else {
                check(inner, value, at)
            }
        }
        Object { required, props } => {
            let Some(map) = value.as_object() else {
                return Err(here("must be an object"));
            };
            for name in *required {
                if !map.contains_key(*name) {
                    return Err(format!("{} is required", join(at, name)));
                }
            }
            for (name, schema) in props {
                if let Some(v) = map.get(*name) {
                    check(schema, v, &join(at, name))?;
                }
            }
            Ok(())
        }
        Array(item) => {
            let Some(items) = value.as_array() else {
                return Err(here("must be an array"));
            };
            for (i, v) in items.iter().enumerate() {
                check(item, v, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        Str => value
            .is_string()
            .then_some(())
            .ok_or_else(|| here("must be a string")),
        Enum(allowed) => match value.as_str() {
            Some(s) if allowed.contains(&s) => Ok(()),
            _ => Err(here(&format!("must be one of {}", allowed.join(", ")))),
        },
        Int => (value.is_i64() || value.is_u64())
            .then_some(())
            .ok_or_else(|| here("must be an integer")),
        Bool => value
            .is_boolean()
            .then_some(())
            .ok_or_else(|| here("must be a boolean")),
        OneOf(options) => {
            let errors: Vec<String> = options
                .iter()
                .filter_map(|o| check(o, value, at).err())
                .collect();
            match options.len() - errors.len() {
                1 => Ok(()),
                0 => Err(errors.join(", or ")),
                _ => Err(here("matches more than one form")),
            }
        }
        AnyOf(options) => {
            let mut first = None;
            for o in options {
                match check(o, value, at) {
                    Ok(()) => return Ok(()),
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
            Err(first.unwrap_or_else(|| here("invalid")))
        }
        AllOf(parts) => parts.iter().try_for_each(|p| check(p, value, at)),
    }
}

fn join(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

/// `POST /v2/account/keys`.
pub fn ssh_key_create() -> Schema {
    obj(
        &["public_key", "name"],
        vec![("public_key", Str), ("name", Str)],
    )
}

/// The body shared by single and multiple droplet creation, after the name(s).
fn droplet_common() -> Schema {
    obj(
        &["size", "image"],
        vec![
            ("region", Str),
            ("size", Str),
            ("image", OneOf(vec![Str, Int])),
            ("ssh_keys", arr(AnyOf(vec![Str, Int]))),
            ("backups", Bool),
            ("ipv6", Bool),
            ("monitoring", Bool),
            ("tags", nullable(arr(Str))),
            ("user_data", Str),
            ("private_networking", Bool),
            ("volumes", arr(Str)),
            ("vpc_uuid", Str),
            ("with_droplet_agent", Bool),
            ("public_networking", Bool),
        ],
    )
}

/// `POST /v2/droplets`: one droplet (`name`) or several (`names`).
pub fn droplet_create() -> Schema {
    OneOf(vec![
        AllOf(vec![obj(&["name"], vec![("name", Str)]), droplet_common()]),
        AllOf(vec![
            obj(&["names"], vec![("names", arr(Str))]),
            droplet_common(),
        ]),
    ])
}

/// `POST /v2/droplets/{id}/actions`.
pub fn droplet_action() -> Schema {
    obj(
        &["type"],
        vec![(
            "type",
            Enum(&[
                "enable_backups",
                "disable_backups",
                "reboot",
                "power_cycle",
                "shutdown",
                "power_off",
                "power_on",
                "restore",
                "password_reset",
                "resize",
                "rebuild",
                "rename",
                "change_kernel",
                "enable_ipv6",
                "snapshot",
            ]),
        )],
    )
}

/// Where a firewall rule's traffic comes from or goes to.
fn targets() -> Schema {
    obj(
        &[],
        vec![
            ("addresses", arr(Str)),
            ("droplet_ids", arr(Int)),
            ("load_balancer_uids", arr(Str)),
            ("kubernetes_ids", arr(Str)),
            ("tags", nullable(arr(Str))),
        ],
    )
}

/// One rule: the protocol and its ports are both required, for icmp too (`"0"`).
fn rule(peer: &'static str) -> Schema {
    let required: &'static [&'static str] = if peer == "sources" {
        &["protocol", "ports", "sources"]
    } else {
        &["protocol", "ports", "destinations"]
    };
    obj(
        required,
        vec![
            ("protocol", Enum(&["tcp", "udp", "icmp"])),
            ("ports", Str),
            (peer, targets()),
        ],
    )
}

/// `POST /v2/firewalls` and `PUT /v2/firewalls/{id}`: a name, and inbound or outbound
/// rules (at least one of the two lists).
pub fn firewall() -> Schema {
    AllOf(vec![
        obj(
            &["name"],
            vec![
                ("name", Str),
                ("droplet_ids", nullable(arr(Int))),
                ("tags", nullable(arr(Str))),
                ("inbound_rules", nullable(arr(rule("sources")))),
                ("outbound_rules", nullable(arr(rule("destinations")))),
            ],
        ),
        AnyOf(vec![
            obj(&["inbound_rules"], vec![]),
            obj(&["outbound_rules"], vec![]),
        ]),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_icmp_rule_without_ports_is_refused() {
        let body = json!({
            "name": "fw",
            "inbound_rules": [{"protocol": "icmp", "sources": {"tags": ["t"]}}],
        });
        assert_eq!(
            check(&firewall(), &body, ""),
            Err("inbound_rules[0].ports is required".into())
        );
        let body = json!({
            "name": "fw",
            "inbound_rules": [{"protocol": "icmp", "ports": "0", "sources": {"tags": ["t"]}}],
        });
        assert_eq!(check(&firewall(), &body, ""), Ok(()));
        let no_rules = json!({"name": "fw"});
        assert!(check(&firewall(), &no_rules, "").is_err());
        let bad_protocol = json!({
            "name": "fw",
            "outbound_rules": [{"protocol": "sctp", "ports": "0", "destinations": {}}],
        });
        assert!(check(&firewall(), &bad_protocol, "")
            .unwrap_err()
            .contains("protocol: must be one of tcp, udp, icmp"));
    }

    #[test]
    fn droplet_creation_takes_a_name_or_names_and_needs_size_and_image() {
        let one = json!({"name": "a", "size": "s-1vcpu-1gb", "image": "ubuntu-24-04-x64"});
        assert_eq!(check(&droplet_create(), &one, ""), Ok(()));
        let many = json!({"names": ["a", "b"], "size": "s", "image": 123, "tags": null});
        assert_eq!(check(&droplet_create(), &many, ""), Ok(()));
        let both = json!({"name": "a", "names": ["b"], "size": "s", "image": "i"});
        assert!(check(&droplet_create(), &both, "").is_err());
        let no_size = json!({"names": ["a"], "image": "i"});
        assert_eq!(
            check(&droplet_create(), &no_size, ""),
            Err("name is required, or size is required".into())
        );
        let bad_tags = json!({"names": ["a"], "size": "s", "image": "i", "tags": "x"});
        assert!(check(&droplet_create(), &bad_tags, "").is_err());
    }

    #[test]
    fn keys_and_actions() {
        assert!(check(&ssh_key_create(), &json!({"name": "k"}), "").is_err());
        assert!(check(&droplet_action(), &json!({"type": "power_off"}), "").is_ok());
        assert!(check(&droplet_action(), &json!({"type": "explode"}), "").is_err());
    }
}
