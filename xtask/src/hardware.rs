//! The device matrix of the hardware VM tests (`xtask/tests/hardware.rs`) and of the bench's
//! modules figure: QEMU's NICs and disk controllers a build farm's servers stand for, and the
//! Linux driver each must bring.

use std::path::{Path, PathBuf};

/// A disk controller of the matrix: QEMU's device, and the Linux driver that must claim it.
#[derive(Clone, Copy)]
pub enum Controller {
    Nvme,
    Ahci,
    MegasasGen2,
    Lsi53c895a,
    VirtioScsi,
    Pvscsi,
    UsbStorage,
    VirtioBlk,
}

impl Controller {
    pub fn driver(self) -> &'static str {
        match self {
            Controller::Nvme => "nvme",
            Controller::Ahci => "ahci",
            Controller::MegasasGen2 => "megaraid_sas",
            Controller::Lsi53c895a => "sym53c8xx",
            Controller::VirtioScsi => "virtio_scsi",
            Controller::Pvscsi => "vmw_pvscsi",
            Controller::UsbStorage => "usb_storage",
            Controller::VirtioBlk => "virtio_blk",
        }
    }

    /// QEMU arguments attaching `disk` behind this controller, its ids made from `n`.
    pub fn args(self, disk: &Path, n: usize) -> Vec<String> {
        let drive = format!("file={},format=raw,if=none,id=disk{n}", disk.display());
        let bus = format!("ctl{n}");
        let scsi = |device: &str| {
            vec![
                format!("{device},id={bus}"),
                format!("scsi-hd,drive=disk{n},bus={bus}.0"),
            ]
        };
        let devices = match self {
            Controller::Nvme => vec![format!("nvme,drive=disk{n},serial=buildos{n}")],
            Controller::Ahci => vec![
                format!("ahci,id={bus}"),
                format!("ide-hd,drive=disk{n},bus={bus}.0"),
            ],
            Controller::MegasasGen2 => scsi("megasas-gen2"),
            Controller::Lsi53c895a => scsi("lsi53c895a"),
            Controller::VirtioScsi => scsi("virtio-scsi-pci"),
            Controller::Pvscsi => scsi("pvscsi"),
            Controller::UsbStorage => vec![
                format!("qemu-xhci,id={bus}"),
                format!("usb-storage,drive=disk{n},bus={bus}.0"),
            ],
            Controller::VirtioBlk => vec![format!("virtio-blk-pci,drive=disk{n}")],
        };
        let mut args = vec!["-drive".to_owned(), drive];
        for device in devices {
            args.push("-device".to_owned());
            args.push(device);
        }
        args
    }
}

/// One boot of the matrix: a NIC (QEMU's model and its driver) as the only NIC on QEMU's
/// user-mode network, and the state and machines disks behind two controllers.
#[derive(Clone, Copy)]
pub struct Case {
    pub nic: &'static str,
    pub nic_driver: &'static str,
    pub state: Controller,
    pub machines: Controller,
}

/// Five boots cover every NIC and controller. QEMU's mptsas1068 (QEMU 7.2) is left out: with
/// Debian's 6.1 kernel, init chooses mptsas, which brings up `LSISAS1068 A0` and registers its
/// eight phys; phy 0, where the disk is, negotiates 3.0 Gbit, but every phy's SAS address reads
/// 0 and the driver makes no sas_port and no sas_end_device, so no SCSI target is ever scanned
/// and no disk appears. Between QEMU's emulated SAS pages and the driver's topology scan, not
/// buildos: the controller has its driver, loaded.
pub const MATRIX: [Case; 5] = [
    Case {
        nic: "e1000e",
        nic_driver: "e1000e",
        state: Controller::Nvme,
        machines: Controller::Ahci,
    },
    Case {
        nic: "rtl8139",
        nic_driver: "8139too",
        state: Controller::MegasasGen2,
        machines: Controller::Lsi53c895a,
    },
    Case {
        nic: "vmxnet3",
        nic_driver: "vmxnet3",
        state: Controller::VirtioScsi,
        machines: Controller::Ahci,
    },
    Case {
        nic: "pcnet",
        nic_driver: "pcnet32",
        state: Controller::Pvscsi,
        machines: Controller::UsbStorage,
    },
    Case {
        nic: "virtio-net-pci",
        nic_driver: "virtio_net",
        state: Controller::VirtioBlk,
        machines: Controller::VirtioBlk,
    },
];

impl Case {
    /// QEMU arguments for this case's NIC and for `disks` (state, machines) behind its
    /// controllers.
    pub fn args(&self, disks: &[PathBuf]) -> Vec<String> {
        let mut args = vec![
            "-netdev".to_owned(),
            "user,id=net0".to_owned(),
            "-device".to_owned(),
            format!("{},netdev=net0", self.nic),
        ];
        for (n, (controller, disk)) in [self.state, self.machines]
            .into_iter()
            .zip(disks)
            .enumerate()
        {
            args.extend(controller.args(disk, n));
        }
        args
    }

    /// A short name: `e1000e, nvme + ahci`.
    pub fn name(&self) -> String {
        format!(
            "{}, {} + {}",
            self.nic,
            self.state.driver(),
            self.machines.driver()
        )
    }
}
