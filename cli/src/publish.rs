//! `--publish` as the docker CLI reads it, and the PORTS column of `service ls`.
//!
//! Short form `[PUBLISHED:]TARGET[/PROTOCOL]`; long form
//! `published=P,target=T,protocol=tcp|udp,mode=ingress|host`. A missing published port
//! is 0: the cluster picks one from 30000-32767 (ingress) or the engine picks one (host).

use bollard_stubs::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum as Proto,
    EndpointPortConfigPublishModeEnum as Mode,
};

fn port(what: &str, v: &str, spec: &str) -> Result<i64, String> {
    match v.parse::<u16>() {
        Ok(p) => Ok(i64::from(p)),
        Err(_) => Err(format!(
            "invalid {what} port {v:?} in --publish {spec}: use a number from 0 to 65535"
        )),
    }
}

fn protocol(v: &str, spec: &str) -> Result<Proto, String> {
    match v {
        "tcp" => Ok(Proto::TCP),
        "udp" => Ok(Proto::UDP),
        other => Err(format!(
            "invalid protocol {other:?} in --publish {spec}: use tcp or udp"
        )),
    }
}

/// Parses one `--publish` value.
pub fn parse(spec: &str) -> Result<EndpointPortConfig, String> {
    let mut out = EndpointPortConfig {
        protocol: Some(Proto::TCP),
        publish_mode: Some(Mode::INGRESS),
        published_port: Some(0),
        ..Default::default()
    };
    if spec.contains('=') {
        for field in spec.split(',') {
            let (k, v) = field.split_once('=').ok_or_else(|| {
                format!("invalid field {field:?} in --publish {spec}: use key=value")
            })?;
            match k {
                "published" => out.published_port = Some(port("published", v, spec)?),
                "target" => out.target_port = Some(port("target", v, spec)?),
                "protocol" => out.protocol = Some(protocol(v, spec)?),
                "mode" => {
                    out.publish_mode = Some(match v {
                        "ingress" => Mode::INGRESS,
                        "host" => Mode::HOST,
                        other => {
                            return Err(format!(
                                "invalid mode {other:?} in --publish {spec}: use ingress or host"
                            ))
                        }
                    })
                }
                other => {
                    return Err(format!(
                        "unknown field {other:?} in --publish {spec}: use published, target, protocol or mode"
                    ))
                }
            }
        }
    } else {
        let (ports, proto) = match spec.split_once('/') {
            Some((p, proto)) => (p, Some(proto)),
            None => (spec, None),
        };
        if let Some(proto) = proto {
            out.protocol = Some(protocol(proto, spec)?);
        }
        match ports.split_once(':') {
            Some((published, target)) => {
                out.published_port = Some(port("published", published, spec)?);
                out.target_port = Some(port("target", target, spec)?);
            }
            None => out.target_port = Some(port("target", ports, spec)?),
        }
    }
    match out.target_port {
        Some(t) if t > 0 => Ok(out),
        _ => Err(format!("--publish {spec} has no target port")),
    }
}

/// The PORTS column as `docker service ls` prints it: `*:9200->9200/tcp`, comma-separated.
/// Like docker's, it lists ingress ports only: a host-mode port belongs to each task.
pub fn ports_column(ports: &[EndpointPortConfig]) -> String {
    ports
        .iter()
        .filter(|p| p.publish_mode != Some(Mode::HOST))
        .map(|p| {
            let proto = match p.protocol {
                Some(Proto::UDP) => "udp",
                Some(Proto::SCTP) => "sctp",
                _ => "tcp",
            };
            format!(
                "*:{}->{}/{proto}",
                p.published_port.unwrap_or(0),
                p.target_port.unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_long_forms() {
        let p = parse("9200:8080").unwrap();
        assert_eq!((p.published_port, p.target_port), (Some(9200), Some(8080)));
        assert_eq!(p.protocol, Some(Proto::TCP));
        assert_eq!(p.publish_mode, Some(Mode::INGRESS));
        let p = parse("7007:7007/udp").unwrap();
        assert_eq!(p.protocol, Some(Proto::UDP));
        let p = parse("80").unwrap();
        assert_eq!((p.published_port, p.target_port), (Some(0), Some(80)));
        let p = parse("published=8080,target=80,protocol=udp,mode=host").unwrap();
        assert_eq!((p.published_port, p.target_port), (Some(8080), Some(80)));
        assert_eq!(p.protocol, Some(Proto::UDP));
        assert_eq!(p.publish_mode, Some(Mode::HOST));
    }

    #[test]
    fn bad_input_names_the_problem() {
        assert!(parse("x:80").unwrap_err().contains("published port"));
        assert!(parse("80/sctp").unwrap_err().contains("use tcp or udp"));
        assert!(parse("published=80").unwrap_err().contains("no target"));
        assert!(parse("target=80,mode=bridge").unwrap_err().contains("mode"));
        assert!(parse("target=80,foo=1")
            .unwrap_err()
            .contains("unknown field"));
        assert!(parse("70000:80").unwrap_err().contains("0 to 65535"));
    }

    #[test]
    fn ports_column_reads_like_docker() {
        let ports = [
            parse("9200:9200").unwrap(),
            parse("53:53/udp").unwrap(),
            parse("mode=host,published=9300,target=80").unwrap(),
        ];
        assert_eq!(ports_column(&ports), "*:9200->9200/tcp, *:53->53/udp");
    }
}
