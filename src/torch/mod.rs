//! What `import torch` gives the official scripts beyond tensors and `nn` (which tch provides):
//! `torch.save` / `torch.load` (`serialization`), `torch.distributed`, `torch.utils.data`'s
//! sampler and loader (`data_loader`), `torch.optim.AdamW` and the parameter groups
//! (`optim`), `torch.autocast` and `torch.cuda.amp.GradScaler` (`amp`),
//! `nn.Module.state_dict` / `load_state_dict` (`state_dict`) and
//! `torch.utils.tensorboard.SummaryWriter` (`tensorboard`); and glibc malloc settings for libtorch's
//! CPU tensors (`malloc`).

pub mod amp;
pub mod data_loader;
pub mod distributed;
pub mod malloc;
pub mod optim;
pub mod serialization;
pub mod state_dict;
pub mod tensorboard;
