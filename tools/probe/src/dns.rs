//! DNS messages for `dns-time`, built and read with hickory-proto: the probe sends its own
//! queries to a given server because a static binary cannot use glibc's resolver.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("{name:?} is not a valid DNS name: {source}")]
    BadName {
        name: String,
        source: hickory_proto::ProtoError,
    },
    #[error("cannot encode the query: {0}")]
    Encode(hickory_proto::ProtoError),
    #[error("undecodable answer: {0}")]
    Decode(String),
}

/// A recursive A query for `name` with id `id`, on the wire.
pub fn a_query(id: u16, name: &str) -> Result<Vec<u8>, DnsError> {
    let parsed = Name::from_ascii(name).map_err(|source| DnsError::BadName {
        name: name.to_string(),
        source,
    })?;
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(parsed, RecordType::A));
    message.to_vec().map_err(DnsError::Encode)
}

/// What an answer says, as far as timing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: u16,
    pub is_response: bool,
    /// A records in the answer section.
    pub a_records: usize,
    pub rcode: String,
}

pub fn read_reply(bytes: &[u8]) -> Result<Reply, DnsError> {
    let message = Message::from_vec(bytes).map_err(|e| DnsError::Decode(e.to_string()))?;
    Ok(Reply {
        id: message.metadata.id,
        is_response: message.metadata.message_type == MessageType::Response,
        a_records: message
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::A)
            .count(),
        rcode: format!("{:?}", message.metadata.response_code),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record};

    #[test]
    fn a_query_asks_for_a_records_recursively() {
        let wire = a_query(0x1234, "tasks.psql").unwrap();
        let back = Message::from_vec(&wire).unwrap();
        assert_eq!(back.metadata.id, 0x1234);
        assert!(back.metadata.recursion_desired);
        assert_eq!(back.queries.len(), 1);
        assert_eq!(back.queries[0].query_type(), RecordType::A);
        assert_eq!(back.queries[0].name().to_ascii(), "tasks.psql.");
        let reply = read_reply(&wire).unwrap();
        assert!(!reply.is_response);
    }

    #[test]
    fn reply_counts_a_records() {
        let name = Name::from_ascii("tasks.psql.").unwrap();
        let mut answer = Message::response(7, OpCode::Query);
        answer.add_query(Query::query(name.clone(), RecordType::A));
        for last in [2u8, 3] {
            answer.answers.push(Record::from_rdata(
                name.clone(),
                5,
                RData::A(A::new(10, 0, 1, last)),
            ));
        }
        let reply = read_reply(&answer.to_vec().unwrap()).unwrap();
        assert_eq!(
            reply,
            Reply {
                id: 7,
                is_response: true,
                a_records: 2,
                rcode: format!("{:?}", ResponseCode::NoError),
            }
        );
    }

    #[test]
    fn bad_names_and_bytes_are_errors() {
        assert!(matches!(
            a_query(1, &"x".repeat(300)),
            Err(DnsError::BadName { .. })
        ));
        assert!(matches!(read_reply(&[1, 2, 3]), Err(DnsError::Decode(_))));
    }
}
