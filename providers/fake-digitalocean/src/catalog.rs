//! The regions, sizes, images and default VPCs the fake offers. Prices are plausible, not
//! DigitalOcean's current list.

use serde_json::{json, Value};

pub(crate) struct RegionInfo {
    pub slug: &'static str,
    pub name: &'static str,
    pub available: bool,
}

#[rustfmt::skip]
pub(crate) const REGIONS: &[RegionInfo] = &[
    RegionInfo { slug: "nyc1", name: "New York 1", available: true },
    RegionInfo { slug: "nyc2", name: "New York 2", available: false },
    RegionInfo { slug: "nyc3", name: "New York 3", available: true },
    RegionInfo { slug: "sfo3", name: "San Francisco 3", available: true },
    RegionInfo { slug: "ams3", name: "Amsterdam 3", available: true },
    RegionInfo { slug: "fra1", name: "Frankfurt 1", available: true },
    RegionInfo { slug: "lon1", name: "London 1", available: true },
    RegionInfo { slug: "tor1", name: "Toronto 1", available: true },
    RegionInfo { slug: "sgp1", name: "Singapore 1", available: true },
    RegionInfo { slug: "blr1", name: "Bangalore 1", available: true },
    RegionInfo { slug: "syd1", name: "Sydney 1", available: true },
];

pub(crate) struct SizeInfo {
    pub slug: &'static str,
    pub memory: u64,
    pub vcpus: u32,
    pub disk: u64,
    pub transfer: f64,
    pub price_monthly: f64,
    pub price_hourly: f64,
    pub description: &'static str,
    /// `None`: every available region.
    pub regions: Option<&'static [&'static str]>,
    pub available: bool,
}

#[rustfmt::skip]
pub(crate) const SIZES: &[SizeInfo] = &[
    SizeInfo { slug: "s-1vcpu-512mb-10gb", memory: 512, vcpus: 1, disk: 10, transfer: 0.5, price_monthly: 4.0, price_hourly: 0.00595, description: "Basic", regions: Some(&["nyc1", "sfo3", "ams3", "fra1", "sgp1"]), available: true },
    SizeInfo { slug: "s-1vcpu-1gb", memory: 1024, vcpus: 1, disk: 25, transfer: 1.0, price_monthly: 6.0, price_hourly: 0.00893, description: "Basic", regions: None, available: true },
    SizeInfo { slug: "s-1vcpu-2gb", memory: 2048, vcpus: 1, disk: 50, transfer: 2.0, price_monthly: 12.0, price_hourly: 0.01786, description: "Basic", regions: None, available: true },
    SizeInfo { slug: "s-2vcpu-2gb", memory: 2048, vcpus: 2, disk: 60, transfer: 3.0, price_monthly: 18.0, price_hourly: 0.02679, description: "Basic", regions: None, available: true },
    SizeInfo { slug: "s-2vcpu-4gb", memory: 4096, vcpus: 2, disk: 80, transfer: 4.0, price_monthly: 24.0, price_hourly: 0.03571, description: "Basic", regions: None, available: true },
    SizeInfo { slug: "s-4vcpu-8gb", memory: 8192, vcpus: 4, disk: 160, transfer: 5.0, price_monthly: 48.0, price_hourly: 0.07143, description: "Basic", regions: None, available: true },
    SizeInfo { slug: "g-2vcpu-8gb", memory: 8192, vcpus: 2, disk: 25, transfer: 4.0, price_monthly: 63.0, price_hourly: 0.09375, description: "General Purpose", regions: Some(&["nyc1", "nyc3", "sfo3", "ams3", "fra1", "lon1", "tor1"]), available: true },
    SizeInfo { slug: "c-2", memory: 4096, vcpus: 2, disk: 25, transfer: 4.0, price_monthly: 42.0, price_hourly: 0.0625, description: "CPU-Optimized", regions: Some(&[]), available: false },
];

#[rustfmt::skip]
pub(crate) const IMAGES: &[(&str, &str, &str, u64)] = &[
    ("ubuntu-24-04-x64", "Ubuntu", "24.04 (LTS) x64", 160_000_001),
    ("ubuntu-22-04-x64", "Ubuntu", "22.04 (LTS) x64", 160_000_002),
    ("debian-12-x64", "Debian", "12 x64", 160_000_003),
    ("rockylinux-9-x64", "Rocky Linux", "9 x64", 160_000_004),
];

pub(crate) fn region(slug: &str) -> Option<&'static RegionInfo> {
    REGIONS.iter().find(|r| r.slug == slug)
}

pub(crate) fn size(slug: &str) -> Option<&'static SizeInfo> {
    SIZES.iter().find(|s| s.slug == slug)
}

pub(crate) fn image(
    slug: &str,
) -> Option<&'static (&'static str, &'static str, &'static str, u64)> {
    IMAGES.iter().find(|i| i.0 == slug)
}

pub(crate) fn size_regions(s: &SizeInfo) -> Vec<&'static str> {
    match s.regions {
        Some(list) => list.to_vec(),
        None => REGIONS
            .iter()
            .filter(|r| r.available)
            .map(|r| r.slug)
            .collect(),
    }
}

pub(crate) fn sizes_in(region: &RegionInfo) -> Vec<&'static str> {
    if !region.available {
        return Vec::new();
    }
    SIZES
        .iter()
        .filter(|s| s.available && size_regions(s).contains(&region.slug))
        .map(|s| s.slug)
        .collect()
}

pub(crate) fn region_json(r: &RegionInfo) -> Value {
    json!({
        "name": r.name,
        "slug": r.slug,
        "features": ["backups", "ipv6", "metadata", "install_agent", "storage", "image_transfer"],
        "available": r.available,
        "sizes": sizes_in(r),
    })
}

pub(crate) fn size_json(s: &SizeInfo) -> Value {
    json!({
        "slug": s.slug,
        "memory": s.memory,
        "vcpus": s.vcpus,
        "disk": s.disk,
        "transfer": s.transfer,
        "price_monthly": s.price_monthly,
        "price_hourly": s.price_hourly,
        "regions": size_regions(s),
        "available": s.available,
        "description": s.description,
        "disk_info": [{"type": "local", "size": {"amount": s.disk, "unit": "gib"}}],
    })
}

pub(crate) fn image_json(slug: &str) -> Value {
    match image(slug) {
        Some((slug, distribution, name, id)) => json!({
            "id": id, "name": name, "distribution": distribution, "slug": slug,
            "public": true, "regions": REGIONS.iter().filter(|r| r.available).map(|r| r.slug).collect::<Vec<_>>(),
            "created_at": "2024-04-25T10:00:00Z", "type": "base", "min_disk_size": 7,
            "size_gigabytes": 2.5, "description": "", "tags": [], "status": "available",
            "error_message": "",
        }),
        None => Value::Null,
    }
}

/// The default VPC of a region: a fixed id and a /20 of its own.
pub(crate) struct VpcInfo {
    pub id: String,
    pub region: &'static str,
    pub ip_range: String,
}

pub(crate) fn default_vpc(region: &str) -> Option<VpcInfo> {
    let idx = REGIONS.iter().position(|r| r.slug == region)?;
    Some(VpcInfo {
        id: format!("5a4981aa-9653-4bd1-bef5-{:012x}", idx + 1),
        region: REGIONS[idx].slug,
        ip_range: format!("10.{}.0.0/20", 108 + idx),
    })
}

pub(crate) fn vpc_json(v: &VpcInfo) -> Value {
    json!({
        "id": v.id,
        "urn": format!("do:vpc:{}", v.id),
        "name": format!("default-{}", v.region),
        "description": "",
        "region": v.region,
        "ip_range": v.ip_range,
        "default": true,
        "created_at": "2020-03-13T19:20:47.442049222Z",
    })
}

pub(crate) fn all_vpcs() -> Vec<VpcInfo> {
    REGIONS.iter().filter_map(|r| default_vpc(r.slug)).collect()
}
