/* aether-init: PID 1 of every Aether microVM (QEMU and Firecracker).
 *
 * Stage 1 (as /init of the initramfs, marked by /etc/aether-initramfs): load the virtio
 * modules, mount the root image read-only with a writable overlay on top, switch_root.
 * Stage 2 (PID 1 in the real root): mount the API filesystems, fetch the per-instance config
 * (virtio-serial port or MMDS v2), check its token against aether.token= on the kernel command
 * line (fail closed), set hostname/network/randomness, start the program as the image's user,
 * stay PID 1 to reap zombies and forward signals, and power off when the program exits.
 * See docs/microvm.md for the contract. Run outside PID 1 it offers self-test modes only. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

/* The few kernel UAPI values we need, so musl-gcc builds without linux-libc-dev headers. */
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#define EVIOCGNAME(len) _IOC(_IOC_READ, 'E', 0x06, len)
#define EV_KEY 0x01
#define KEY_POWER 116
struct input_event { struct timeval time; unsigned short type, code; int value; };

#define MAX_CONFIG (1 << 20)
#define STOP_GRACE_MS 10000
#define MMDS_LINK_ADDR "169.254.0.15"
/* How long the guest polls MMDS for its config (a template waits there until it is snapshotted). */
#define MMDS_WAIT_MS (10 * 60 * 1000)
#define MMDS_POLL_MAX_MS 20

extern char **environ;

static int debug;
/* aether.vmm=firecracker: power off by rebooting (see power_off). */
static int vmm_firecracker;
static double t_start, t_modules, t_switched;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void say(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n > sizeof buf - 2) n = sizeof buf - 2;
  buf[n++] = '\n';
  /* "AETHER-INIT: " prefix is part of the contract: hosts grep the console for it. One write per line. */
  char line[1040];
  memcpy(line, "AETHER-INIT: ", 13);
  memcpy(line + 13, buf, (size_t)n);
  (void)!write(2, line, (size_t)n + 13);
}
#define dbg(...) do { if (debug) say(__VA_ARGS__); } while (0)

static int write_all(int fd, const void *p, size_t n) {
  const char *s = p;
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

static char *read_file(const char *path, size_t max, size_t *len_out) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  char *buf = malloc(max + 1);
  size_t len = 0;
  if (buf) {
    for (;;) {
      if (len == max) { free(buf); buf = NULL; errno = EFBIG; break; }
      ssize_t r = read(fd, buf + len, max - len);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) { free(buf); buf = NULL; break; }
      if (r == 0) break;
      len += (size_t)r;
    }
  }
  close(fd);
  if (buf) { buf[len] = 0; if (len_out) *len_out = len; }
  return buf;
}

/* ---------- power ---------- */

static void power_off(void) {
  sync();
  /* Firecracker (x86) has no power-off device: RB_POWER_OFF only halts the guest and the VMM keeps
   * running, while a reboot with reboot=k on the command line makes Firecracker exit. */
  if (vmm_firecracker) reboot(RB_AUTOBOOT);
  reboot(RB_POWER_OFF);
  /* microvm without ACPI power-off still exits under `-no-reboot` with reboot=t. */
  reboot(RB_AUTOBOOT);
  for (;;) pause();
}

static void fatal(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  say("%s", buf);
  if (getpid() == 1) power_off();
  exit(1);
}

/* ---------- kernel command line ---------- */

static char cmdline[4096];

/* Value of `key=` on /proc/cmdline, copied into out; 0 when found. */
static int cmdline_get(const char *key, char *out, size_t cap) {
  size_t kl = strlen(key);
  const char *p = cmdline;
  while (*p) {
    while (*p == ' ' || *p == '\n') p++;
    const char *e = p;
    while (*e && *e != ' ' && *e != '\n') e++;
    if ((size_t)(e - p) > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
      size_t vl = (size_t)(e - p) - kl - 1;
      if (vl >= cap) return -1;
      memcpy(out, p + kl + 1, vl);
      out[vl] = 0;
      return 0;
    }
    p = e;
  }
  return -1;
}

static void cmdline_flags(void) {
  char v[8];
  debug = cmdline_get("aether.debug", v, sizeof v) == 0 && v[0] == '1';
  char vmm[16];
  vmm_firecracker = cmdline_get("aether.vmm", vmm, sizeof vmm) == 0 && strcmp(vmm, "firecracker") == 0;
}

static void read_cmdline(void) {
  char *cl = read_file("/proc/cmdline", sizeof cmdline - 1, NULL);
  if (cl) { snprintf(cmdline, sizeof cmdline, "%s", cl); free(cl); }
  cmdline_flags();
}

/* ---------- mounts and modules ---------- */

static void mkdirs(const char *path, mode_t mode) {
  char tmp[512];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *q = tmp + 1; *q; q++)
    if (*q == '/') { *q = 0; mkdir(tmp, mode); *q = '/'; }
  mkdir(tmp, mode);
}

static int is_mountpoint(const char *path) {
  struct stat a, b;
  char parent[520];
  snprintf(parent, sizeof parent, "%s/..", path);
  return stat(path, &a) == 0 && stat(parent, &b) == 0 && a.st_dev != b.st_dev;
}

static int do_mount(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
  mkdirs(dst, 0755);
  if (!(flags & MS_MOVE) && is_mountpoint(dst)) return 0; /* moved over from the initramfs */
  if (mount(src, dst, type, flags, data) == 0) return 0;
  if (errno == EBUSY) return 0;
  dbg("mount %s on %s (%s): %s", src, dst, type, strerror(errno));
  return -1;
}

static void ensure_stdio(void) {
  if (fcntl(2, F_GETFD) >= 0) return;
  int fd = open("/dev/console", O_RDWR | O_NOCTTY);
  if (fd < 0) return;
  for (int i = 0; i < 3; i++) if (fd != i) dup2(fd, i);
  if (fd > 2) close(fd);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Loads every .ko under dir in name order (the builder prefixes names with their load order). */
static void load_modules(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  char *names[64];
  size_t n = 0;
  struct dirent *de;
  while ((de = readdir(d)) && n < 64) {
    size_t l = strlen(de->d_name);
    if (l > 3 && strcmp(de->d_name + l - 3, ".ko") == 0) names[n++] = strdup(de->d_name);
  }
  closedir(d);
  qsort(names, n, sizeof names[0], cmp_str);
  for (size_t i = 0; i < n; i++) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      double t = now_s();
      if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) say("module %s: %s", names[i], strerror(errno));
      dbg("module %s: %.0f ms", names[i], (now_s() - t) * 1000);
      close(fd);
    }
    free(names[i]);
  }
}

static int wait_path(const char *path, int ms) {
  for (int waited = 0;; waited += 2) {
    if (access(path, F_OK) == 0) return 0;
    if (waited >= ms) return -1;
    usleep(2000);
  }
}

static void stage1(void) {
  do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  ensure_stdio();
  do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  read_cmdline();
  load_modules("/lib/modules/aether");
  t_modules = now_s();

  /* The root image: /dev/vda, ext4, read-only. */
  if (wait_path("/dev/vda", 5000) != 0) fatal("no root drive /dev/vda");
  if (do_mount("/dev/vda", "/mnt/lower", "ext4", MS_RDONLY, "noload") != 0) fatal("cannot mount root drive: %s", strerror(errno));
  /* Writable layer: /dev/vdc (ext4) when the host gives one, else RAM. */
  int rw_disk = access("/dev/vdc", F_OK) == 0 && do_mount("/dev/vdc", "/mnt/rw", "ext4", 0, NULL) == 0;
  if (!rw_disk && do_mount("tmpfs", "/mnt/rw", "tmpfs", 0, "mode=0755") != 0) fatal("cannot mount tmpfs");
  mkdirs("/mnt/rw/upper", 0755);
  mkdirs("/mnt/rw/work", 0755);
  if (do_mount("overlay", "/newroot", "overlay", 0, "lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work") != 0)
    fatal("cannot mount overlay root: %s", strerror(errno));

  /* switch_root: move the API mounts, make /newroot the root. The few hundred KiB of
   * initramfs stay allocated; not worth a recursive delete in PID 1. */
  do_mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL);
  do_mount("/proc", "/newroot/proc", NULL, MS_MOVE, NULL);
  do_mount("/sys", "/newroot/sys", NULL, MS_MOVE, NULL);
  if (chdir("/newroot") != 0 || mount(".", "/", NULL, MS_MOVE, NULL) != 0 || chroot(".") != 0 || chdir("/") != 0)
    fatal("switch_root failed: %s", strerror(errno));
  t_switched = now_s();
}

static void stage2_mounts(void) {
  do_mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
  ensure_stdio();
  do_mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  do_mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
  do_mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
  do_mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  do_mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
  do_mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
  if (access("/dev/ptmx", F_OK) != 0) symlink("pts/ptmx", "/dev/ptmx");
  symlink("/proc/self/fd", "/dev/fd");
  /* The function's code drive (absent for services). */
  if (access("/dev/vdb", F_OK) == 0 &&
      do_mount("/dev/vdb", "/run/aether/code", "ext4", MS_RDONLY | MS_NOSUID | MS_NODEV, "noload") != 0)
    say("cannot mount code drive /dev/vdb: %s", strerror(errno));
}

/* ---------- network (ioctl: enough for one address and a default route) ---------- */

static int if_flags(const char *ifname, int up) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
  int rc = ioctl(s, SIOCGIFFLAGS, &ifr);
  if (rc == 0) {
    if (up) ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    else ifr.ifr_flags &= ~IFF_UP;
    rc = ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  close(s);
  return rc;
}

static void set_sin(struct sockaddr *sa, in_addr_t a) {
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof sin);
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = a;
  memcpy(sa, &sin, sizeof sin);
}

/* Sets (addr != 0) or removes (addr == 0) the interface's IPv4 address. */
static int if_addr(const char *ifname, in_addr_t addr, int prefix) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname);
  set_sin(&ifr.ifr_addr, addr);
  int rc = ioctl(s, SIOCSIFADDR, &ifr);
  if (rc == 0 && addr != 0) {
    set_sin(&ifr.ifr_netmask, prefix == 0 ? 0 : htonl(0xFFFFFFFFu << (32 - prefix)));
    rc = ioctl(s, SIOCSIFNETMASK, &ifr);
  }
  close(s);
  return rc;
}

static int add_default_route(const char *ifname, in_addr_t gw) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return -1;
  struct rtentry rt;
  memset(&rt, 0, sizeof rt);
  set_sin(&rt.rt_dst, 0);
  set_sin(&rt.rt_genmask, 0);
  set_sin(&rt.rt_gateway, gw);
  rt.rt_flags = RTF_UP | RTF_GATEWAY;
  char dev[IFNAMSIZ];
  snprintf(dev, sizeof dev, "%s", ifname);
  rt.rt_dev = dev;
  int rc = ioctl(s, SIOCADDRT, &rt);
  if (rc != 0 && errno == EEXIST) rc = 0;
  close(s);
  return rc;
}

/* "a.b.c.d/nn" → address and prefix; 0 when valid. */
static int parse_cidr(const char *s, in_addr_t *addr, int *prefix) {
  char buf[32];
  const char *slash = strchr(s, '/');
  if (!slash || (size_t)(slash - s) >= sizeof buf) return -1;
  memcpy(buf, s, (size_t)(slash - s));
  buf[slash - s] = 0;
  struct in_addr a;
  if (inet_pton(AF_INET, buf, &a) != 1) return -1;
  char *end;
  long p = strtol(slash + 1, &end, 10);
  if (*end || slash[1] == 0 || p < 1 || p > 32) return -1;
  *addr = a.s_addr;
  *prefix = (int)p;
  return 0;
}

/* ---------- config ---------- */

struct kv { char *k, *v; };

struct config {
  char *token, *instance_id, *hostname, *cwd, *user, *seed;
  char **cmd; size_t ncmd;
  struct kv *env; size_t nenv;
  int net; /* 0: field absent (slirp default), 1: null (leave eth0 alone), 2: given */
  char *net_address, *net_gateway;
  char **dns; size_t ndns;
  long port; /* 0 = none */
  double time_ms; /* 0 = none */
};

struct runtime_meta {
  char *user, *workdir;
  struct kv *env; size_t nenv;
  char **writable; size_t nwritable;
  char **cmd; size_t ncmd;
};

static const char *cfg_err;

static char *str_field(const jnode *o, const char *key, int *bad) {
  const jnode *v = json_get(o, key);
  if (!v || v->type == J_NULL) return NULL;
  if (v->type != J_STR) { *bad = 1; cfg_err = key; return NULL; }
  return strdup(v->str);
}

static char **str_array(const jnode *o, const char *key, size_t *n, int *bad) {
  const jnode *v = json_get(o, key);
  *n = 0;
  if (!v || v->type == J_NULL) return NULL;
  if (v->type != J_ARR) { *bad = 1; cfg_err = key; return NULL; }
  size_t c = 0;
  for (const jnode *e = v->child; e; e = e->next) {
    if (e->type != J_STR) { *bad = 1; cfg_err = key; return NULL; }
    c++;
  }
  char **out = calloc(c + 1, sizeof *out);
  for (const jnode *e = v->child; e; e = e->next) out[(*n)++] = strdup(e->str);
  return out;
}

static int valid_env_key(const char *k) {
  if (!*k) return 0;
  for (const char *p = k; *p; p++) if (*p == '=') return 0;
  return 1;
}

static struct kv *env_object(const jnode *o, const char *key, size_t *n, int *bad) {
  const jnode *v = json_get(o, key);
  *n = 0;
  if (!v || v->type == J_NULL) return NULL;
  if (v->type != J_OBJ) { *bad = 1; cfg_err = key; return NULL; }
  size_t c = 0;
  for (const jnode *e = v->child; e; e = e->next) {
    if (e->type != J_STR || !valid_env_key(e->key)) { *bad = 1; cfg_err = key; return NULL; }
    c++;
  }
  struct kv *out = calloc(c + 1, sizeof *out);
  for (const jnode *e = v->child; e; e = e->next) {
    out[*n].k = strdup(e->key);
    out[*n].v = strdup(e->str);
    (*n)++;
  }
  return out;
}

static int is_hex(const char *s) {
  if (!*s) return 0;
  for (; *s; s++) if (!isxdigit((unsigned char)*s)) return 0;
  return 1;
}

/* Constant-time string comparison (the token is a secret). */
static int token_equal(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  unsigned char d = la != lb;
  for (size_t i = 0; i < la && i < lb; i++) d |= (unsigned char)(a[i] ^ b[i]);
  return d == 0;
}

/* Parses and validates a config; NULL (and cfg_err) when it must be rejected. */
static struct config *parse_config(const char *text, size_t len, const char *want_token) {
  const char *perr = NULL;
  jnode *root = json_parse(text, len, &perr);
  /* MMDS may hand the config back as a JSON string holding the document. */
  if (root && root->type == J_STR) {
    jnode *inner = json_parse(root->str, strlen(root->str), &perr);
    json_free(root);
    root = inner;
  }
  if (!root) { cfg_err = perr ? perr : "invalid JSON"; return NULL; }
  if (root->type != J_OBJ) { cfg_err = "config is not an object"; json_free(root); return NULL; }
  struct config *c = calloc(1, sizeof *c);
  int bad = 0;
  c->token = str_field(root, "token", &bad);
  c->instance_id = str_field(root, "instance_id", &bad);
  c->hostname = str_field(root, "hostname", &bad);
  c->cwd = str_field(root, "cwd", &bad);
  c->user = str_field(root, "user", &bad);
  c->seed = str_field(root, "seed", &bad);
  c->cmd = str_array(root, "cmd", &c->ncmd, &bad);
  c->env = env_object(root, "env", &c->nenv, &bad);
  const jnode *net = json_get(root, "net");
  if (!net) c->net = 0;
  else if (net->type == J_NULL) c->net = 1;
  else if (net->type == J_OBJ) {
    c->net = 2;
    c->net_address = str_field(net, "address", &bad);
    c->net_gateway = str_field(net, "gateway", &bad);
    c->dns = str_array(net, "dns", &c->ndns, &bad);
    in_addr_t a; int p; struct in_addr g;
    if (!c->net_address || parse_cidr(c->net_address, &a, &p) != 0) { bad = 1; cfg_err = "net.address"; }
    if (c->net_gateway && inet_pton(AF_INET, c->net_gateway, &g) != 1) { bad = 1; cfg_err = "net.gateway"; }
    for (size_t i = 0; i < c->ndns; i++) if (inet_pton(AF_INET, c->dns[i], &g) != 1) { bad = 1; cfg_err = "net.dns"; }
  } else { bad = 1; cfg_err = "net"; }
  const jnode *port = json_get(root, "port");
  if (port && port->type != J_NULL) {
    if (port->type != J_NUM || port->num != (double)(long)port->num || port->num < 1 || port->num > 65535) { bad = 1; cfg_err = "port"; }
    else c->port = (long)port->num;
  }
  const jnode *tm = json_get(root, "time_ms");
  if (tm && tm->type != J_NULL) {
    if (tm->type != J_NUM || tm->num < 0) { bad = 1; cfg_err = "time_ms"; }
    else c->time_ms = tm->num;
  }
  json_free(root);
  if (!bad && c->cmd && c->ncmd == 0) { bad = 1; cfg_err = "cmd is empty"; }
  if (!bad && c->cwd && c->cwd[0] != '/') { bad = 1; cfg_err = "cwd must be absolute"; }
  if (!bad && c->hostname && (strlen(c->hostname) == 0 || strlen(c->hostname) > 64)) { bad = 1; cfg_err = "hostname"; }
  if (!bad && (!c->token || !is_hex(c->token))) { bad = 1; cfg_err = "token missing or not hex"; }
  if (!bad && (!want_token || !is_hex(want_token) || !token_equal(c->token, want_token))) { bad = 1; cfg_err = "token mismatch"; }
  if (bad) return NULL; /* leaks c: we power off (or exit) right after */
  return c;
}

static struct runtime_meta *load_runtime_meta(const char *path) {
  struct runtime_meta *m = calloc(1, sizeof *m);
  size_t len;
  char *text = read_file(path, MAX_CONFIG, &len);
  if (!text) return m;
  const char *perr = NULL;
  jnode *root = json_parse(text, len, &perr);
  free(text);
  if (!root || root->type != J_OBJ) { say("ignoring %s: %s", path, root ? "not an object" : perr); json_free(root); return m; }
  int bad = 0;
  m->user = str_field(root, "user", &bad);
  m->workdir = str_field(root, "workdir", &bad);
  m->env = env_object(root, "env", &m->nenv, &bad);
  m->writable = str_array(root, "writable_paths", &m->nwritable, &bad);
  m->cmd = str_array(root, "cmd", &m->ncmd, &bad);
  if (bad) say("%s: field %s has the wrong type (ignored)", path, cfg_err);
  json_free(root);
  return m;
}

/* ---------- environment ---------- */

struct envb { char **v; size_t n, cap; };

static void env_set(struct envb *e, const char *k, const char *val) {
  size_t kl = strlen(k);
  char *s = malloc(kl + strlen(val) + 2);
  sprintf(s, "%s=%s", k, val);
  for (size_t i = 0; i < e->n; i++)
    if (strncmp(e->v[i], k, kl) == 0 && e->v[i][kl] == '=') { free(e->v[i]); e->v[i] = s; return; }
  if (e->n + 2 > e->cap) { e->cap = e->cap ? e->cap * 2 : 32; e->v = realloc(e->v, e->cap * sizeof *e->v); }
  e->v[e->n++] = s;
  e->v[e->n] = NULL;
}

static int env_has(const struct envb *e, const char *k) {
  size_t kl = strlen(k);
  for (size_t i = 0; i < e->n; i++) if (strncmp(e->v[i], k, kl) == 0 && e->v[i][kl] == '=') return 1;
  return 0;
}

/* ---------- users (parsed from the image's /etc/passwd and /etc/group) ---------- */

struct ident { uid_t uid; gid_t gid; char name[64]; char home[256]; gid_t groups[32]; int ngroups; };

static int all_digits(const char *s) {
  if (!*s) return 0;
  for (; *s; s++) if (!isdigit((unsigned char)*s)) return 0;
  return 1;
}

/* Finds a line of an /etc file whose field 0 (by name) or field 2 (by id) matches. */
static int etc_lookup(const char *file, const char *name, long id, char fields[7][256]) {
  FILE *f = fopen(file, "re");
  if (!f) return -1;
  char line[1024];
  int found = -1;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    int nf = 0;
    char *p = line;
    for (; nf < 7; nf++) {
      char *c = strchr(p, ':');
      size_t l = c ? (size_t)(c - p) : strlen(p);
      if (l > 255) l = 255;
      memcpy(fields[nf], p, l);
      fields[nf][l] = 0;
      if (!c) { nf++; break; }
      p = c + 1;
    }
    for (int k = nf; k < 7; k++) fields[k][0] = 0;
    if (nf < 3) continue;
    if ((name && strcmp(fields[0], name) == 0) || (!name && all_digits(fields[2]) && strtol(fields[2], NULL, 10) == id)) { found = 0; break; }
  }
  fclose(f);
  return found;
}

/* Docker-style user: name, uid, name:group, uid:gid. */
static int resolve_user(const char *spec, struct ident *id) {
  char u[128], g[128] = "";
  memset(id, 0, sizeof *id);
  snprintf(u, sizeof u, "%s", spec);
  char *colon = strchr(u, ':');
  if (colon) { snprintf(g, sizeof g, "%s", colon + 1); *colon = 0; }
  if (!*u) return -1;
  char f[7][256];
  if (all_digits(u)) {
    id->uid = (uid_t)strtoul(u, NULL, 10);
    id->gid = (gid_t)id->uid;
    if (etc_lookup("/etc/passwd", NULL, (long)id->uid, f) == 0) {
      id->gid = (gid_t)strtoul(f[3], NULL, 10);
      snprintf(id->name, sizeof id->name, "%s", f[0]);
      snprintf(id->home, sizeof id->home, "%s", f[5]);
    }
  } else {
    if (etc_lookup("/etc/passwd", u, 0, f) != 0) return -1;
    id->uid = (uid_t)strtoul(f[2], NULL, 10);
    id->gid = (gid_t)strtoul(f[3], NULL, 10);
    snprintf(id->name, sizeof id->name, "%s", f[0]);
    snprintf(id->home, sizeof id->home, "%s", f[5]);
  }
  if (*g) {
    if (all_digits(g)) id->gid = (gid_t)strtoul(g, NULL, 10);
    else if (etc_lookup("/etc/group", g, 0, f) == 0) id->gid = (gid_t)strtoul(f[2], NULL, 10);
    else return -1;
  }
  id->groups[id->ngroups++] = id->gid;
  /* Supplementary groups that list the user by name. */
  FILE *gf = *id->name ? fopen("/etc/group", "re") : NULL;
  if (gf) {
    char line[1024];
    while (fgets(line, sizeof line, gf) && id->ngroups < 32) {
      line[strcspn(line, "\n")] = 0;
      char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL, *c3 = c2 ? strchr(c2 + 1, ':') : NULL;
      if (!c3) continue;
      for (char *m = strtok(c3 + 1, ","); m; m = strtok(NULL, ","))
        if (strcmp(m, id->name) == 0) { gid_t x = (gid_t)strtoul(c2 + 1, NULL, 10); if (x != id->gid) id->groups[id->ngroups++] = x; break; }
    }
    fclose(gf);
  }
  return 0;
}

static void chown_tree(const char *path, uid_t uid, gid_t gid, int depth) {
  struct stat st;
  if (lstat(path, &st) != 0) return;
  lchown(path, uid, gid);
  if (!S_ISDIR(st.st_mode) || depth > 64) return;
  DIR *d = opendir(path);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
    char sub[4096];
    if ((size_t)snprintf(sub, sizeof sub, "%s/%s", path, de->d_name) >= sizeof sub) continue;
    struct stat cs;
    if (lstat(sub, &cs) == 0 && cs.st_dev != st.st_dev) continue; /* stay on one filesystem */
    chown_tree(sub, uid, gid, depth + 1);
  }
  closedir(d);
}

/* ---------- the plan: what to run, merged from runtime.json and config ---------- */

struct plan {
  char **argv;
  struct envb env;
  const char *cwd;
  const char *user;
  struct ident id;
  int have_user;
};

static int make_plan(const struct config *c, const struct runtime_meta *m, struct plan *p) {
  memset(p, 0, sizeof *p);
  p->argv = c->ncmd ? c->cmd : m->cmd;
  if (!p->argv || !p->argv[0]) { cfg_err = "no command (config cmd and image cmd are empty)"; return -1; }
  p->cwd = c->cwd ? c->cwd : m->workdir && *m->workdir ? m->workdir : "/";
  p->user = c->user && *c->user ? c->user : m->user && *m->user ? m->user : NULL;
  if (p->user) {
    if (resolve_user(p->user, &p->id) != 0) { cfg_err = "unknown user"; return -1; }
    p->have_user = 1;
  }
  env_set(&p->env, "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  env_set(&p->env, "HOME", p->have_user && *p->id.home ? p->id.home : p->have_user && p->id.uid != 0 ? "/" : "/root");
  if (p->have_user && *p->id.name) env_set(&p->env, "USER", p->id.name);
  for (size_t i = 0; i < m->nenv; i++) env_set(&p->env, m->env[i].k, m->env[i].v);
  for (size_t i = 0; i < c->nenv; i++) env_set(&p->env, c->env[i].k, c->env[i].v);
  if (c->port && !env_has(&p->env, "PORT")) {
    char b[16];
    snprintf(b, sizeof b, "%ld", c->port);
    env_set(&p->env, "PORT", b);
  }
  return 0;
}

/* ---------- config transports ---------- */

static char *find_vport(const char *name, const char *fallback) {
  static char path[2][64];
  static int slot;
  char *out = path[slot++ & 1];
  DIR *d = opendir("/sys/class/virtio-ports");
  if (d) {
    struct dirent *de;
    while ((de = readdir(d))) {
      if (de->d_name[0] == '.') continue;
      char f[300];
      snprintf(f, sizeof f, "/sys/class/virtio-ports/%s/name", de->d_name);
      char *n = read_file(f, 256, NULL);
      if (n) {
        n[strcspn(n, "\n")] = 0;
        int match = strcmp(n, name) == 0;
        free(n);
        if (match) { snprintf(out, 64, "/dev/%s", de->d_name); closedir(d); return out; }
      }
    }
    closedir(d);
  }
  snprintf(out, 64, "%s", fallback);
  return out;
}

static int ctl_fd = -1;

static char *config_over_vport(size_t *len) {
  const char *path = NULL;
  for (int waited = 0; waited < 10000; waited += 5) {
    path = find_vport("aether.ctl", "/dev/vport0p1");
    if (access(path, F_OK) == 0) break;
    usleep(5000);
  }
  ctl_fd = open(path, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (ctl_fd < 0) { cfg_err = "no config port"; return NULL; }
  static const char ready[] = "AETHER-INIT READY\n";
  if (write_all(ctl_fd, ready, sizeof ready - 1) != 0) { cfg_err = "cannot write to config port"; return NULL; }
  /* One JSON line. A template VM is snapshotted while blocked here. */
  char *buf = malloc(MAX_CONFIG + 1);
  size_t n = 0;
  for (;;) {
    if (n == MAX_CONFIG) { cfg_err = "config too large"; return NULL; }
    ssize_t r = read(ctl_fd, buf + n, MAX_CONFIG - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EAGAIN) { usleep(10000); continue; }
    if (r < 0) { cfg_err = "config port read error"; return NULL; }
    if (r == 0) { usleep(10000); continue; } /* host not connected yet */
    char *nl = memchr(buf + n, '\n', (size_t)r);
    n += (size_t)r;
    if (nl) { *len = (size_t)(nl - buf); buf[*len] = 0; return buf; }
  }
}

/* One HTTP/1.1 request on a fresh connection; returns the body (malloc'd) or NULL. */
static char *http_request(in_addr_t ip, int port, const char *req, int *status, size_t *body_len) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return NULL;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)port);
  sa.sin_addr.s_addr = ip;
  char *buf = NULL;
  if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) goto out;
  struct pollfd pf = { s, POLLOUT, 0 };
  if (poll(&pf, 1, 1000) != 1) goto out;
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  if (getsockopt(s, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) goto out;
  int fl = fcntl(s, F_GETFL);
  fcntl(s, F_SETFL, fl & ~O_NONBLOCK);
  /* MMDS is in the VMM: it answers at once. A request cut by a snapshot must not stall a restore long. */
  struct timeval tv = { 2, 0 };
  setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (write_all(s, req, strlen(req)) != 0) goto out;
  size_t cap = MAX_CONFIG + 8192, n = 0;
  buf = malloc(cap + 1);
  long clen = -1;
  char *body = NULL;
  for (;;) {
    if (n == cap) break;
    ssize_t r = read(s, buf + n, cap - n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    n += (size_t)r;
    buf[n] = 0;
    if (!body) {
      char *eoh = strstr(buf, "\r\n\r\n");
      if (!eoh) continue;
      body = eoh + 4;
      *status = (strncmp(buf, "HTTP/1.", 7) == 0 && n > 12) ? atoi(buf + 9) : 0;
      for (char *h = strstr(buf, "\r\n"); h && h < eoh; h = strstr(h + 2, "\r\n"))
        if (strncasecmp(h + 2, "content-length:", 15) == 0) clen = strtol(h + 17, NULL, 10);
    }
    if (clen >= 0 && (size_t)(buf + n - body) >= (size_t)clen) break;
  }
  if (!body) { free(buf); buf = NULL; goto out; }
  size_t blen = (size_t)(buf + n - body);
  if (clen >= 0 && (size_t)clen < blen) blen = (size_t)clen;
  memmove(buf, body, blen);
  buf[blen] = 0;
  *body_len = blen;
out:
  close(s);
  return buf;
}

/* Prints `AETHER-INIT READY`, then polls MMDS v2 (a fresh session token each time: a restored
 * snapshot runs in a new VMM that knows none of the old ones) until /aether/config answers 200.
 * Backoff from 1 ms up to MMDS_POLL_MAX_MS, so a restore finds its config within that. The budget
 * counts time slept plus each attempt's time capped at 3 s, not the clock: a template paused for
 * days (or a guest clock that jumps on restore) still gets its config after the restore. */
static char *mmds_poll(in_addr_t ip, int port, const char *host, long wait_ms, size_t *len) {
  static const char ready[] = "AETHER-INIT READY\n";
  (void)!write(2, ready, sizeof ready - 1);
  char req[512], token[256];
  int status = 0, delay_ms = 1;
  size_t blen = 0;
  char *body = NULL;
  long waited_ms = 0;
  for (unsigned attempt = 0;; attempt++) {
    double t0 = now_s();
    snprintf(req, sizeof req,
             "PUT /latest/api/token HTTP/1.1\r\nHost: %s\r\nX-metadata-token-ttl-seconds: 300\r\n\r\n", host);
    char *t = http_request(ip, port, req, &status, &blen);
    if (t && status == 200 && blen > 0 && blen < sizeof token) {
      memcpy(token, t, blen);
      token[blen] = 0;
      token[strcspn(token, "\r\n")] = 0;
      snprintf(req, sizeof req,
               "GET /aether/config HTTP/1.1\r\nHost: %s\r\nAccept: application/json\r\nX-metadata-token: %s\r\n\r\n", host, token);
      body = http_request(ip, port, req, &status, &blen);
      if (body && status != 200) { dbg("MMDS GET: HTTP %d", status); free(body); body = NULL; }
    }
    free(t);
    memset(token, 0, sizeof token);
    if (body) { *len = blen; return body; }
    double spent = (now_s() - t0) * 1000;
    waited_ms += spent < 0 ? 0 : spent > 3000 ? 3000 : (long)spent;
    if (waited_ms >= wait_ms) { cfg_err = "no config in MMDS"; return NULL; }
    if (attempt == 200) dbg("still waiting for config in MMDS");
    usleep((useconds_t)delay_ms * 1000);
    waited_ms += delay_ms;
    if (delay_ms < MMDS_POLL_MAX_MS) delay_ms = delay_ms * 2 > MMDS_POLL_MAX_MS ? MMDS_POLL_MAX_MS : delay_ms * 2;
  }
}

static char *config_over_mmds(size_t *len) {
  char spec[64] = "169.254.169.254:80";
  cmdline_get("aether.mmds", spec, sizeof spec); /* test hook: another address:port */
  char *colon = strchr(spec, ':');
  int port = colon ? atoi(colon + 1) : 80;
  if (colon) *colon = 0;
  struct in_addr ip;
  if (inet_pton(AF_INET, spec, &ip) != 1) { cfg_err = "bad aether.mmds"; return NULL; }
  /* MMDS needs an IPv4 source on eth0; a link-local one is enough (replaced after config). */
  if (wait_path("/sys/class/net/eth0", 5000) != 0) { cfg_err = "no eth0 for MMDS"; return NULL; }
  struct in_addr ll;
  inet_pton(AF_INET, MMDS_LINK_ADDR, &ll);
  if_flags("eth0", 1);
  if (if_addr("eth0", ll.s_addr, 16) != 0) say("eth0 link-local address: %s", strerror(errno));
  char *body = mmds_poll(ip.s_addr, port, spec, MMDS_WAIT_MS, len);
  if_addr("eth0", 0, 0);
  return body;
}

/* ---------- identity: hostname, network, time, randomness ---------- */

static void apply_identity(const struct config *c) {
  const char *h = c->hostname ? c->hostname : c->instance_id ? c->instance_id : "aether";
  if (sethostname(h, strnlen(h, 64)) != 0) say("sethostname: %s", strerror(errno));
  if (c->time_ms > 0) {
    struct timespec ts = { (time_t)(c->time_ms / 1000), (long)((long long)c->time_ms % 1000) * 1000000L };
    clock_settime(CLOCK_REALTIME, &ts);
  }
  if (c->seed) {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    struct { int entropy_count; int buf_size; unsigned char buf[512]; } rpi;
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0;
    for (const char *p = c->seed; *p && *p != '=' && n < sizeof rpi.buf; p++) {
      const char *q = strchr(tbl, *p);
      if (!q || !*p) continue;
      acc = (acc << 6) | (unsigned)(q - tbl);
      bits += 6;
      if (bits >= 8) { bits -= 8; rpi.buf[n++] = (unsigned char)(acc >> bits); }
    }
    int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
    if (fd >= 0 && n > 0) {
      rpi.entropy_count = (int)(n * 8);
      rpi.buf_size = (int)n;
      if (ioctl(fd, RNDADDENTROPY, &rpi) != 0) (void)!write(fd, rpi.buf, n); /* mixes, without credit */
    }
    if (fd >= 0) close(fd);
    memset(&rpi, 0, sizeof rpi);
  }
  if (c->net == 1) return;
  if (access("/sys/class/net/eth0", F_OK) != 0) return;
  const char *addr = c->net == 2 ? c->net_address : "10.0.2.15/24";
  const char *gw = c->net == 2 ? c->net_gateway : "10.0.2.2";
  in_addr_t a; int prefix; struct in_addr g;
  if (parse_cidr(addr, &a, &prefix) != 0) return;
  if_flags("eth0", 1);
  if (if_addr("eth0", a, prefix) != 0) say("eth0 address %s: %s", addr, strerror(errno));
  if (gw && inet_pton(AF_INET, gw, &g) == 1 && add_default_route("eth0", g.s_addr) != 0) say("default route via %s: %s", gw, strerror(errno));
  const char *dns_default = c->net == 0 ? "10.0.2.3" : NULL;
  if (c->ndns > 0 || dns_default) {
    int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
      char line[80];
      if (c->ndns == 0) write_all(fd, line, (size_t)snprintf(line, sizeof line, "nameserver %s\n", dns_default));
      for (size_t i = 0; i < c->ndns; i++) write_all(fd, line, (size_t)snprintf(line, sizeof line, "nameserver %s\n", c->dns[i]));
      close(fd);
    }
  }
}

/* ---------- running the program ---------- */

static int open_log_channel(int vport_mode) {
  if (vport_mode) {
    const char *p = find_vport("aether.log", "/dev/vport0p2");
    int fd = open(p, O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd >= 0) return fd;
  }
  int fd = open("/dev/ttyS0", O_WRONLY | O_NOCTTY | O_CLOEXEC);
  if (fd < 0) fd = open("/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC);
  if (fd >= 0) {
    /* Raw bytes: no "\n" → "\r\n" translation of the program's output. */
    struct termios t;
    if (tcgetattr(fd, &t) == 0) { t.c_oflag &= ~(tcflag_t)OPOST; tcsetattr(fd, TCSANOW, &t); }
  }
  return fd;
}

static pid_t start_program(struct plan *p, int log_fd, const sigset_t *oldmask) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  sigprocmask(SIG_SETMASK, oldmask, NULL);
  for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
  setsid();
  int nul = open("/dev/null", O_RDWR);
  if (nul >= 0) dup2(nul, 0);
  if (log_fd >= 0) { dup2(log_fd, 1); dup2(log_fd, 2); }
  if (p->have_user) {
    if (setgroups((size_t)p->id.ngroups, p->id.groups) != 0 || setgid(p->id.gid) != 0 || setuid(p->id.uid) != 0) {
      dprintf(2, "AETHER-INIT: cannot switch to user %s: %s\n", p->user, strerror(errno));
      _exit(126);
    }
  }
  if (chdir(p->cwd) != 0) {
    dprintf(2, "AETHER-INIT: chdir %s: %s\n", p->cwd, strerror(errno));
    _exit(126);
  }
  environ = p->env.v;
  execvp(p->argv[0], p->argv);
  dprintf(2, "AETHER-INIT: exec %s: %s\n", p->argv[0], strerror(errno));
  _exit(127);
}

/* Opens the ACPI power button (evdev) so `system_powerdown` stops the program like SIGTERM. */
static int open_power_button(void) {
  for (int i = 0; i < 8; i++) {
    char path[64], name[128] = "";
    snprintf(path, sizeof path, "/dev/input/event%d", i);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) continue;
    if (ioctl(fd, EVIOCGNAME(sizeof name - 1), name) >= 0 && strstr(name, "Power Button")) return fd;
    close(fd);
  }
  return -1;
}

static int supervise(pid_t child, const sigset_t *mask) {
  int sfd = signalfd(-1, mask, SFD_CLOEXEC | SFD_NONBLOCK);
  int pbfd = open_power_button();
  int status = 0, stopping = 0;
  double deadline = 0;
  for (;;) {
    struct pollfd pf[2] = { { sfd, POLLIN, 0 }, { pbfd, POLLIN, 0 } };
    int timeout = stopping ? (int)((deadline - now_s()) * 1000) : -1;
    if (stopping && timeout <= 0) {
      say("program did not stop within %d ms; killing it", STOP_GRACE_MS);
      kill(-child, SIGKILL);
      kill(child, SIGKILL);
      stopping = 0;
      timeout = -1;
    }
    poll(pf, pbfd >= 0 ? 2 : 1, timeout);
    int stop_sig = 0;
    if (pbfd >= 0 && (pf[1].revents & POLLIN)) {
      struct input_event ev;
      while (read(pbfd, &ev, sizeof ev) == (ssize_t)sizeof ev)
        if (ev.type == EV_KEY && ev.code == KEY_POWER && ev.value == 1) stop_sig = SIGTERM;
    }
    if (pf[0].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGCHLD) continue;
        /* SIGINT also arrives from Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) since CAD is off. */
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT || si.ssi_signo == SIGPWR) stop_sig = si.ssi_signo == SIGPWR ? SIGTERM : (int)si.ssi_signo;
        else kill(child, (int)si.ssi_signo);
      }
    }
    if (stop_sig) {
      kill(child, stop_sig);
      if (!stopping) { stopping = 1; deadline = now_s() + STOP_GRACE_MS / 1000.0; }
    }
    for (;;) {
      int st;
      pid_t r = waitpid(-1, &st, WNOHANG);
      if (r <= 0) break;
      if (r == child) { status = st; goto done; }
    }
  }
done:
  if (pbfd >= 0) close(pbfd);
  return status;
}

static void finish(int status) {
  int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  say("program exited with %s %d", WIFEXITED(status) ? "status" : "signal", WIFEXITED(status) ? code : WTERMSIG(status));
  if (ctl_fd >= 0) {
    char line[48];
    write_all(ctl_fd, line, (size_t)snprintf(line, sizeof line, "AETHER-INIT EXIT %d\n", code));
  }
  /* Everyone else gets a short grace, then the VM powers off. */
  kill(-1, SIGTERM);
  for (int i = 0; i < 50; i++) {
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
    if (kill(-1, 0) != 0 && errno == ESRCH) break;
    usleep(10000);
  }
  kill(-1, SIGKILL);
  power_off();
}

/* ---------- self-test modes (not PID 1) ---------- */

static char *read_stdin(size_t *len) {
  char *buf = malloc(MAX_CONFIG + 1);
  size_t n = 0;
  ssize_t r;
  while (n < MAX_CONFIG && (r = read(0, buf + n, MAX_CONFIG - n)) > 0) n += (size_t)r;
  buf[n] = 0;
  *len = n;
  return buf;
}

static int selftest(int argc, char **argv) {
  size_t len;
  if (argc >= 2 && strcmp(argv[1], "--json") == 0) {
    char *text = read_stdin(&len);
    const char *err = NULL;
    jnode *n = json_parse(text, len, &err);
    if (!n) { printf("ERR %s\n", err); return 1; }
    fflush(stdout);
    json_write(1, n);
    (void)!write(1, "\n", 1);
    json_free(n);
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "--plan") == 0) {
    /* --plan TOKEN [runtime.json] < config: prints the resolved plan or the rejection. */
    char *text = read_stdin(&len);
    struct config *c = parse_config(text, len, argv[2]);
    if (!c) { printf("REJECT %s\n", cfg_err); return 2; }
    struct runtime_meta *m = argc >= 4 ? load_runtime_meta(argv[3]) : calloc(1, sizeof *m);
    struct plan p;
    if (make_plan(c, m, &p) != 0) { printf("NOPLAN %s\n", cfg_err); return 3; }
    for (char **a = p.argv; *a; a++) printf("argv=%s\n", *a);
    printf("cwd=%s\n", p.cwd);
    if (p.have_user) printf("user=%u:%u\n", (unsigned)p.id.uid, (unsigned)p.id.gid);
    for (size_t i = 0; i < p.env.n; i++) printf("env=%s\n", p.env.v[i]);
    printf("net=%d%s%s\n", c->net, c->net_address ? " " : "", c->net_address ? c->net_address : "");
    if (c->hostname) printf("hostname=%s\n", c->hostname);
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "--power") == 0) {
    /* --power 'kernel command line': how this guest would end its VM. */
    snprintf(cmdline, sizeof cmdline, "%s", argv[2]);
    cmdline_flags();
    printf("%s\n", vmm_firecracker ? "reboot" : "poweroff");
    return 0;
  }
  if (argc >= 3 && strcmp(argv[1], "--mmds") == 0) {
    /* --mmds IP:PORT [WAIT_MS]: the MMDS client against a test server; prints the config body. */
    char spec[64];
    snprintf(spec, sizeof spec, "%s", argv[2]);
    char *colon = strchr(spec, ':');
    struct in_addr ip;
    if (!colon) return 64;
    *colon = 0;
    if (inet_pton(AF_INET, spec, &ip) != 1) return 64;
    char *body = mmds_poll(ip.s_addr, atoi(colon + 1), spec, argc >= 4 ? atol(argv[3]) : MMDS_WAIT_MS, &len);
    if (!body) { printf("FAIL %s\n", cfg_err); return 2; }
    fflush(stdout);
    write_all(1, body, len);
    return 0;
  }
  fprintf(stderr, "aether-init: runs as PID 1 in an Aether microVM (self-test: --json | --plan TOKEN [runtime.json] | --power CMDLINE | --mmds IP:PORT [WAIT_MS])\n");
  return 64;
}

/*
 * `--reap PID [-- LABEL...]`: PID 1 of a process sandbox (not a VM); LABEL only names it in `ps`. launch.pl/container.pl fork the program
 * (PID) and then exec this, so the namespace's PID 1 is ~0.1 MiB instead of a resident perl
 * (~5 MiB per instance). It reaps every orphan and exits with PID's status (128+n when it died of
 * signal n). No signal handlers: as PID 1 it ignores SIGTERM, as perl did; the namespace ends with it.
 */
static int reap(pid_t want) {
  for (;;) {
    int st;
    pid_t w = wait(&st);
    if (w < 0) {
      if (errno == EINTR) continue;
      return 125;
    }
    if (w == want) return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st);
  }
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "--reap") == 0) return reap((pid_t)atoi(argv[2]));
  if (getpid() != 1) return selftest(argc, argv);
  t_start = now_s();
  umask(022);
  if (access("/etc/aether-initramfs", F_OK) == 0) stage1();
  stage2_mounts();
  read_cmdline();

  /* Signals: all handled through a signalfd in supervise(); CAD → SIGINT to us. */
  sigset_t mask, oldmask;
  sigemptyset(&mask);
  int sigs[] = { SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGPWR };
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&mask, sigs[i]);
  sigprocmask(SIG_BLOCK, &mask, &oldmask);
  reboot(RB_DISABLE_CAD);
  if_flags("lo", 1);

  char token[256] = "", mode[16] = "vport";
  cmdline_get("aether.token", token, sizeof token);
  cmdline_get("aether.config", mode, sizeof mode);
  int vport_mode = strcmp(mode, "mmds") != 0;
  double t_ready = now_s();
  size_t len = 0;
  char *text = vport_mode ? config_over_vport(&len) : config_over_mmds(&len);
  double t_config = now_s();
  struct config *c = text ? parse_config(text, len, token) : NULL;
  if (text) { memset(text, 0, len); free(text); }
  memset(cmdline, 0, sizeof cmdline);
  if (!c) {
    int lf = open_log_channel(vport_mode);
    if (lf >= 0) dprintf(lf, "AETHER-INIT: config rejected (%s)\n", cfg_err);
    fatal("config rejected (%s)", cfg_err);
  }
  apply_identity(c);
  struct runtime_meta *m = load_runtime_meta("/etc/firework/runtime.json");
  struct plan p;
  if (make_plan(c, m, &p) != 0) fatal("cannot start: %s", cfg_err);
  memset(token, 0, sizeof token);
  free(c->token);
  c->token = NULL;
  if (p.have_user) {
    for (size_t i = 0; i < m->nwritable; i++) chown_tree(m->writable[i], p.id.uid, p.id.gid, 0);
    if (access("/run/aether/code", F_OK) == 0) lchown("/run/aether", p.id.uid, p.id.gid);
  }
  int log_fd = open_log_channel(vport_mode);
  pid_t child = start_program(&p, log_fd, &oldmask);
  if (child < 0) fatal("fork: %s", strerror(errno));
  double t_exec = now_s();
  /* kernel: boot clock when init started; init: our own time (modules + root switch included),
   * without config-wait (the host's answer; a template VM is snapshotted while waiting). */
  say("started %s pid=%d kernel=%.3fs init=%.3fs (modules %.3fs, root %.3fs) config-wait=%.3fs", p.argv[0], (int)child, t_start,
      (t_ready - t_start) + (t_exec - t_config), t_modules > 0 ? t_modules - t_start : 0, t_switched > 0 ? t_switched - t_modules : 0,
      t_config - t_ready);
  if (ctl_fd >= 0) {
    char line[64];
    write_all(ctl_fd, line, (size_t)snprintf(line, sizeof line, "AETHER-INIT STARTED %d\n", (int)child));
  }
  finish(supervise(child, &mask));
  return 0;
}
