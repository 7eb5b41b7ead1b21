//! Decoded register dumps (read-only: nothing is written).

use serde_json::{json, Value};

use ioat_driver::model::{FaultClass, ModelDevice};
use ioat_driver::regs::{
    cap, chan, chanctrl, channel_base, chansts, general, pci, CbVersion, ChanErr, ChanState,
    RegisterAccess,
};

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn bit_names(v: u64, table: &'static [(u64, &'static str)]) -> Vec<&'static str> {
    table
        .iter()
        .filter(|(b, _)| v & b != 0)
        .map(|(_, n)| *n)
        .collect()
}

const INTRCTRL_BITS: &[(u64, &str)] = &[
    (general::INTRCTRL_MASTER_INT_EN as u64, "MASTER_INT_EN"),
    (general::INTRCTRL_INT_STATUS as u64, "INT_STATUS"),
    (general::INTRCTRL_INT as u64, "INT"),
    (
        general::INTRCTRL_MSIX_VECTOR_CONTROL as u64,
        "MSIX_VECTOR_CONTROL",
    ),
];

const CS_STATUS_BITS: &[(u64, &str)] = &[
    (0x1, "DEGRADED_MODE"),
    (0x2, "MMIO_RESTRICTED"),
    (0x4, "MEMORY_BYPASS"),
    (0x8, "ADDRESS_REMAPPING"),
];

const DMACAP_BITS: &[(u64, &str)] = &[
    (cap::PAGE_BREAK as u64, "PAGE_BREAK"),
    (cap::CRC as u64, "CRC"),
    (cap::SKIP_MARKER as u64, "SKIP_MARKER"),
    (cap::DCA as u64, "DCA"),
    (cap::CRC_MOVE as u64, "CRC_MOVE"),
    (cap::FILL_BLOCK as u64, "FILL_BLOCK"),
    (cap::APIC as u64, "APIC"),
    (cap::XOR as u64, "XOR"),
    (cap::PQ as u64, "PQ"),
    (cap::DWBES as u64, "DWBES"),
    (cap::RAID16SS as u64, "RAID16SS"),
    (cap::DPS as u64, "DPS"),
];

const CHANCTRL_BITS: &[(u64, &str)] = &[
    (chanctrl::INT_REARM as u64, "INT_REARM"),
    (chanctrl::ERR_COMPLETION_EN as u64, "ERR_COMPLETION_EN"),
    (chanctrl::ANY_ERR_ABORT_EN as u64, "ANY_ERR_ABORT_EN"),
    (chanctrl::ERR_INT_EN as u64, "ERR_INT_EN"),
    (
        chanctrl::DESCRIPTOR_ADDR_SNOOP_CONTROL as u64,
        "DESC_ADDR_SNOOP_CONTROL",
    ),
    (chanctrl::CHANNEL_IN_USE as u64, "CHANNEL_IN_USE"),
    (chanctrl::COMPL_DCA_EN as u64, "COMPL_DCA_EN"),
];

/// The general registers, decoded. ATTNSTATUS is left out on purpose: Linux reads it only in
/// its interrupt handler and no source says whether a read clears it, so a dump that must not
/// change device state does not touch it.
pub fn general_json(r: &dyn RegisterAccess) -> Value {
    let chancnt = r.read8(general::CHANCNT);
    let xfercap = r.read8(general::XFERCAP);
    let xl = xfercap & general::FIELD_MASK_5;
    let cbver = CbVersion(r.read8(general::CBVER));
    let intrctrl = r.read8(general::INTRCTRL) as u64;
    let intrdelay = r.read16(general::INTRDELAY);
    let cs = r.read16(general::CS_STATUS) as u64;
    let dmacap = r.read32(general::DMACAPABILITY) as u64;
    let mut v = json!({
        "CHANCNT": {"value": chancnt, "channels": chancnt & general::FIELD_MASK_5},
        "XFERCAP": {"value": xfercap, "max_bytes_per_descriptor": if xl == 0 { 1u64 << 32 } else { 1u64 << xl }},
        "GENCTRL": {"value": hex(r.read8(general::GENCTRL) as u64)},
        "INTRCTRL": {"value": hex(intrctrl), "bits": bit_names(intrctrl, INTRCTRL_BITS)},
        "CBVER": {"value": hex(cbver.0 as u64), "version": cbver.to_string()},
        "PERPORTOFFSET": {"value": hex(r.read16(general::PERPORTOFFSET) as u64)},
        "INTRDELAY": {
            "value": hex(intrdelay as u64),
            "delay_us": intrdelay & general::INTRDELAY_MASK,
            "coalescing_supported": intrdelay & general::INTRDELAY_COALESCE_SUPPORT != 0,
        },
        "CS_STATUS": {"value": hex(cs), "bits": bit_names(cs, CS_STATUS_BITS)},
        "DMACAPABILITY": {"value": hex(dmacap), "bits": bit_names(dmacap, DMACAP_BITS)},
        "DCAOFFSET": {"value": hex(r.read16(general::DCAOFFSET) as u64)},
    });
    if dmacap & cap::DPS as u64 != 0 {
        v["PREFETCH_LIMIT"] = json!({"value": r.read8(general::PREFETCH_LIMIT)});
    }
    if cbver.has_chanerr_int() {
        v["CHANERR_INT (cfg 0x180)"] =
            json!({"value": hex(r.config_read32(pci::CHANERR_INT) as u64)});
    }
    v["DMAUNCERRSTS (cfg 0x148)"] =
        json!({"value": hex(r.config_read32(pci::DMAUNCERRSTS) as u64)});
    v
}

/// One channel's registers, decoded.
pub fn channel_json(r: &dyn RegisterAccess, n: u32, cbver: CbVersion) -> Value {
    let b = channel_base(n);
    let ctrl = r.read16(b + chan::CHANCTRL) as u64;
    let sts = r.read64(b + chan::CHANSTS);
    let state = ChanState::from_bits(sts);
    let err = ChanErr(r.read32(b + chan::CHANERR));
    let mut flags = Vec::new();
    if sts & chansts::UNAFFILIATED_ERR != 0 {
        flags.push("UNAFFILIATED_ERR");
    }
    if sts & chansts::SOFT_ERR != 0 {
        flags.push("SOFT_ERR");
    }
    let descriptions: Vec<&str> = ioat_driver::regs::chanerr::NAMES
        .iter()
        .filter(|(bit, _, _)| err.0 & bit != 0)
        .map(|(_, _, d)| *d)
        .collect();
    let mut v = json!({
        "channel": n,
        "base": hex(b as u64),
        "CHANCTRL": {
            "value": hex(ctrl),
            "bits": bit_names(ctrl, CHANCTRL_BITS),
            "priority": (ctrl & chanctrl::PRIORITY_MASK as u64) >> 12,
        },
        "DMA_COMP": {"value": hex(r.read16(b + chan::DMA_COMP) as u64)},
        "CHANCMD": {"value": hex(r.read8(b + chan::CHANCMD) as u64)},
        "DMACOUNT": {"value": r.read16(b + chan::DMACOUNT)},
        "CHANSTS": {
            "value": hex(sts),
            "state": state.to_string(),
            "completed_descriptor": hex(sts & chansts::COMPLETED_ADDR_MASK),
            "flags": flags,
        },
        "CHAINADDR": {"value": hex(r.read64(b + chan::CHAINADDR))},
        "CHANCMP": {"value": hex(r.read64(b + chan::CHANCMP))},
        "CDAR": {"value": hex(r.read64(b + chan::CDAR))},
        "CHANERR": {"value": hex(err.0 as u64), "names": err.names(), "descriptions": descriptions},
        "CHANERR_MASK": {"value": hex(r.read32(b + chan::CHANERR_MASK) as u64)},
        "DCACTRL": {"value": hex(r.read32(b + chan::DCACTRL) as u64)},
    });
    if cbver >= CbVersion::V3_4 {
        v["DRSCTL"] = json!({"value": hex(r.read16(b + chan::DRSCTL) as u64)});
    }
    v
}

/// Human rendering of [`channel_json`].
pub fn channel_text(v: &Value) -> String {
    let g = |k: &str| {
        v[k]["value"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| v[k]["value"].to_string())
    };
    let names = |k: &str, f: &str| {
        let a: Vec<String> = v[k][f]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if a.is_empty() {
            "-".to_string()
        } else {
            a.join("|")
        }
    };
    let mut s = format!(
        "channel {} (BAR0+{})\n",
        v["channel"],
        v["base"].as_str().unwrap_or("?")
    );
    s.push_str(&format!(
        "  CHANSTS      {:<20} state {}, completed descriptor {}, flags {}\n",
        g("CHANSTS"),
        v["CHANSTS"]["state"].as_str().unwrap_or("?"),
        v["CHANSTS"]["completed_descriptor"].as_str().unwrap_or("?"),
        names("CHANSTS", "flags")
    ));
    s.push_str(&format!(
        "  CHANERR      {:<20} {}\n",
        g("CHANERR"),
        names("CHANERR", "names")
    ));
    s.push_str(&format!(
        "  CHANCTRL     {:<20} {} (priority {})\n",
        g("CHANCTRL"),
        names("CHANCTRL", "bits"),
        v["CHANCTRL"]["priority"]
    ));
    for k in [
        "DMACOUNT",
        "CHANCMD",
        "DMA_COMP",
        "CHAINADDR",
        "CHANCMP",
        "CDAR",
        "CHANERR_MASK",
        "DCACTRL",
        "DRSCTL",
    ] {
        if !v[k].is_null() {
            s.push_str(&format!("  {:<12} {}\n", k, g(k)));
        }
    }
    s
}

/// Human rendering of [`general_json`].
pub fn general_text(v: &Value) -> String {
    let mut s = String::from("general registers\n");
    if let Some(o) = v.as_object() {
        for (k, x) in o {
            let val = x["value"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| x["value"].to_string());
            let mut extra = Vec::new();
            for (ek, ev) in x.as_object().into_iter().flatten() {
                if ek == "value" {
                    continue;
                }
                match ev {
                    Value::Array(a) if a.is_empty() => extra.push(format!("{ek}: -")),
                    Value::Array(a) => extra.push(format!(
                        "{ek}: {}",
                        a.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join("|")
                    )),
                    Value::String(t) => extra.push(format!("{ek}: {t}")),
                    other => extra.push(format!("{ek}: {other}")),
                }
            }
            s.push_str(&format!("  {:<24} {:<12} {}\n", k, val, extra.join(", ")));
        }
    }
    s
}

/// What only the software model knows, for `ioat-ctl regs model`: PCI COMMAND and the
/// capability list, and the faults recorded so far, in their two classes. A device error is
/// one the hardware itself reports (a CHANERR bit and a halt, e.g. a DMA to an unmapped IOVA);
/// misuse is what the hardware would punish silently (a doorbell lost in a reset, DMA with bus
/// mastering off, a torn or dropped access), which only the model can flag.
pub fn model_json(m: &ModelDevice) -> Value {
    let cmd = m.config_read16(pci::COMMAND);
    let mut caps = Vec::new();
    let mut at = m.config_read8(0x34) as u16;
    while at != 0 && caps.len() < 16 {
        let id = m.config_read8(at);
        caps.push(json!({
            "offset": hex(at as u64),
            "id": hex(id as u64),
            "name": match id { 0x10 => "PCI Express", 0x11 => "MSI-X", 0x05 => "MSI", 0x01 => "Power Management", _ => "other" },
        }));
        at = m.config_read8(at + 1) as u16;
    }
    let list = |class: FaultClass| -> Vec<Value> {
        m.violations()
            .iter()
            .filter(|v| v.class == class)
            .map(|v| {
                json!({
                    "rule": v.rule,
                    "tag": v.tag.to_string(),
                    "severity": format!("{:?}", v.severity),
                    "channel": v.channel,
                    "register": v.register,
                    "message": v.message,
                })
            })
            .collect()
    };
    json!({
        "pci_command": {
            "value": hex(cmd as u64),
            "memory": cmd & pci::COMMAND_MEMORY != 0,
            "bus_master": cmd & pci::COMMAND_MASTER != 0,
            "intx_disable": cmd & pci::COMMAND_INTX_DISABLE != 0,
        },
        "capabilities": caps,
        "device_errors": list(FaultClass::DeviceError),
        "misuse": list(FaultClass::Misuse),
    })
}

/// Human rendering of [`model_json`].
pub fn model_text(v: &Value) -> String {
    let mut s = String::from("model\n");
    let c = &v["pci_command"];
    s.push_str(&format!(
        "  PCI COMMAND  {:<20} memory {}, bus master {}, INTx disable {}\n",
        c["value"].as_str().unwrap_or("?"),
        c["memory"],
        c["bus_master"],
        c["intx_disable"]
    ));
    let caps: Vec<String> = v["capabilities"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} at {}",
                c["name"].as_str().unwrap_or("?"),
                c["offset"].as_str().unwrap_or("?")
            )
        })
        .collect();
    s.push_str(&format!("  capabilities {}\n", caps.join(", ")));
    for (k, title) in [
        (
            "device_errors",
            "device errors (reported by the hardware: CHANERR + halt)",
        ),
        ("misuse", "misuse (the hardware would not report it)"),
    ] {
        let a = v[k].as_array().cloned().unwrap_or_default();
        s.push_str(&format!("  {title}: {}\n", a.len()));
        for x in a {
            s.push_str(&format!(
                "    {} [{}] {}: {}\n",
                x["rule"].as_str().unwrap_or("?"),
                x["tag"].as_str().unwrap_or("?"),
                x["register"].as_str().unwrap_or("?"),
                x["message"].as_str().unwrap_or("")
            ));
        }
    }
    s
}
