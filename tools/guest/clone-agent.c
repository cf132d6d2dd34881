/*
 * clone-agent: the test guest's agent for nova-clonedriver.
 *
 * Runs inside the test guest (started by /init) and gives the host a way to
 * see what a clone inherited from its master and what makes it unique:
 *
 *   - every second it prints "clone-agent hb=<n>" on the console, <n> a
 *     counter that only goes up, so a clone's console shows it carrying on
 *     from the master's value;
 *   - it answers one-line requests "<id> <command> [args]" with one JSON
 *     line carrying the same id, on the virtio-serial port named
 *     org.nova-clonedriver.agent.0 and on the console.
 *
 * Commands (see doc/source/test-guest.rst):
 *   ping                 heartbeat counter, pattern size, MemAvailable
 *   fill <mib> <seed>    fill <mib> MiB of fresh memory with a seeded pattern
 *   checksum             recompute the checksum of the filled memory
 *   dirty <percent> <seed>  rewrite that share of the filled pages
 *   identity             16 random bytes, VM generation ID, NICs (MAC, IPv4)
 *   diskwrite <block> <seed>  write a seeded 4 KiB block to /dev/vda, synced
 *   diskread <block>     checksum of that 4 KiB block of /dev/vda
 *
 * Kernel command line "clone_agent.fill=<mib>:<seed>" fills at boot.
 *
 * The ACPI power button (what libvirt's shutdown, and so nova's clean stop,
 * soft reboot, shelve and rescue, press) powers the guest off at once, as a
 * real guest's init would after shutting down: without it nova waits its
 * whole shutdown timeout for a guest that never goes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/input.h>
#include <linux/reboot.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "org.nova-clonedriver.agent.0"
#define PAGE_SIZE_BYTES 4096UL
#define LINE_MAX_BYTES 512
#define MAX_NICS 16
#define REPLY_TRIES 20
#define REPLY_WAIT_MS 100
#define HUP_RECHECK_MS 100

static uint64_t heartbeat;
static uint64_t *pattern;
static size_t pattern_bytes;
static uint64_t pattern_seed;

struct channel {
    int fd;
    char buf[LINE_MAX_BYTES];
    size_t used;
};

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* Every page gets its own words, so no two pages are alike (KSM and zero-page
 * detection cannot make the pattern look cheaper than real guest data). */
static void write_page(uint64_t *page, uint64_t seed, size_t index)
{
    uint64_t v = splitmix64(seed ^ (index * 0x100000001b3ULL));
    for (size_t i = 0; i < PAGE_SIZE_BYTES / 8; i++)
        page[i] = v + i;
}

static uint64_t pattern_checksum(void)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t words = pattern_bytes / 8;
    for (size_t i = 0; i < words; i++)
        h = (h ^ pattern[i]) * 0x100000001b3ULL;
    return h;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

static void reply(int fd, const char *id, const char *fmt, ...)
{
    char out[4096];
    int n = snprintf(out, sizeof(out), "{\"id\":\"%s\",", id);
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(out + n, sizeof(out) - n - 2, fmt, ap);
    va_end(ap);
    out[n++] = '}';
    out[n++] = '\n';
    /* The guest learns that a host connected a moment after the host's first
     * bytes arrive; until then the port refuses writes (EAGAIN). Wait a
     * little for it, then give up on a host that really is gone. */
    for (int tries = 0; tries < REPLY_TRIES; tries++) {
        if (write(fd, out, n) >= 0)
            return;
        if (errno != EAGAIN && errno != EPIPE) {
            perror("clone-agent: reply");
            return;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, REPLY_WAIT_MS) == 0 || (pfd.revents & POLLHUP))
            usleep(REPLY_WAIT_MS * 1000);
    }
}

static int do_fill(size_t mib, uint64_t seed)
{
    if (pattern)
        munmap(pattern, pattern_bytes);
    pattern = NULL;
    pattern_bytes = mib << 20;
    if (!pattern_bytes)
        return 0;
    pattern = mmap(NULL, pattern_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pattern == MAP_FAILED) {
        pattern = NULL;
        pattern_bytes = 0;
        return -1;
    }
    pattern_seed = seed;
    for (size_t p = 0; p < pattern_bytes / PAGE_SIZE_BYTES; p++)
        write_page(pattern + p * (PAGE_SIZE_BYTES / 8), seed, p);
    return 0;
}

/* Rewrite <percent> of every 100 pages, spread over each hundred (37 is
 * prime to 100), so that the pages of a smaller percent are among those of a
 * larger one: after "dirty 1" then "dirty 10", 10% of the pages differ from
 * the master's, not 10% plus some of the 1%. */
#define DIRTY_SPREAD 37
static size_t do_dirty(unsigned percent, uint64_t seed)
{
    size_t pages = pattern_bytes / PAGE_SIZE_BYTES;
    size_t count = 0;
    for (size_t p = 0; p < pages; p++) {
        if ((p * DIRTY_SPREAD) % 100 < percent) {
            write_page(pattern + p * (PAGE_SIZE_BYTES / 8), seed, p);
            count++;
        }
    }
    return count;
}

/* QEMU's vmgenid fw_cfg blob holds the GUID at this offset. */
#define VMGENID_GUID_OFFSET 40

static void read_file_hex(const char *path, off_t offset, size_t len,
                          char *out, size_t out_len)
{
    unsigned char raw[64];
    out[0] = '\0';
    int fd = open(path, O_RDONLY);
    if (fd < 0 || len > sizeof(raw))
        return;
    ssize_t n = pread(fd, raw, len, offset);
    close(fd);
    for (ssize_t i = 0; i < n && (size_t)(2 * i + 2) < out_len; i++)
        sprintf(out + 2 * i, "%02x", raw[i]);
}

static void read_first_line(const char *path, char *out, size_t out_len)
{
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    if (fgets(out, out_len, f))
        out[strcspn(out, "\n")] = '\0';
    fclose(f);
}

static void ipv4_of(const char *ifname, char *out, size_t out_len)
{
    struct ifreq ifr;
    out[0] = '\0';
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0)
        return;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, IFNAMSIZ, "%.15s", ifname);
    if (ioctl(s, SIOCGIFADDR, &ifr) == 0)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr,
                  out, out_len);
    close(s);
}

static void do_identity(int fd, const char *id)
{
    unsigned char rnd[16];
    char rnd_hex[33] = "", genid[80], nics[1536] = "";
    size_t used = 0;

    if (getrandom(rnd, sizeof(rnd), 0) == sizeof(rnd))
        for (int i = 0; i < 16; i++)
            sprintf(rnd_hex + 2 * i, "%02x", rnd[i]);
    read_file_hex("/sys/firmware/qemu_fw_cfg/by_name/etc/vmgenid_guid/raw",
                  VMGENID_GUID_OFFSET, 16, genid, sizeof(genid));

    DIR *d = opendir("/sys/class/net");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[300], mac[32], ip[INET_ADDRSTRLEN];
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "lo"))
            continue;
        snprintf(path, sizeof(path), "/sys/class/net/%s/address", e->d_name);
        read_first_line(path, mac, sizeof(mac));
        ipv4_of(e->d_name, ip, sizeof(ip));
        used += snprintf(nics + used, sizeof(nics) - used,
                         "%s{\"name\":\"%s\",\"mac\":\"%s\",\"ipv4\":\"%s\"}",
                         used ? "," : "", e->d_name, mac, ip);
        if (used >= sizeof(nics) - 128)
            break;
    }
    if (d)
        closedir(d);
    reply(fd, id, "\"ok\":true,\"random\":\"%s\",\"genid\":\"%s\",\"nics\":[%s]",
          rnd_hex, genid, nics);
}

/* One 4 KiB block of the first disk, by the block device (no file system
 * in the test guest), bypassing the guest's page cache both ways. */
#define DISK_PATH "/dev/vda"
#define DISK_BLOCK_BYTES 4096

static void do_disk(int fd, const char *id, int write_it,
                    unsigned long long block, unsigned long long seed)
{
    uint64_t *buf = NULL;
    uint64_t sum = 0;
    int disk = open(DISK_PATH, (write_it ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (disk < 0 || posix_memalign((void **)&buf, DISK_BLOCK_BYTES, DISK_BLOCK_BYTES)) {
        reply(fd, id, "\"ok\":false,\"error\":\"cannot open %s: %s\"", DISK_PATH,
              strerror(errno));
        if (disk >= 0)
            close(disk);
        return;
    }
    off_t offset = (off_t)block * DISK_BLOCK_BYTES;
    size_t words = DISK_BLOCK_BYTES / sizeof(uint64_t);
    ssize_t n;
    if (write_it) {
        for (size_t i = 0; i < words; i++)
            buf[i] = (seed + 1) * 0x9e3779b97f4a7c15ULL ^ (block * words + i);
        n = pwrite(disk, buf, DISK_BLOCK_BYTES, offset);
        if (n == DISK_BLOCK_BYTES && fsync(disk))
            n = -1;
    } else {
        n = pread(disk, buf, DISK_BLOCK_BYTES, offset);
    }
    if (n != DISK_BLOCK_BYTES) {
        reply(fd, id, "\"ok\":false,\"error\":\"%s of block %llu failed: %s\"",
              write_it ? "write" : "read", block, n < 0 ? strerror(errno) : "short");
    } else {
        for (size_t i = 0; i < words; i++)
            sum = (sum ^ buf[i]) * 0x100000001b3ULL;
        reply(fd, id, "\"ok\":true,\"block\":%llu,\"checksum\":\"%016llx\"", block,
              (unsigned long long)sum);
    }
    free(buf);
    close(disk);
}

static long mem_available_kib(void)
{
    char line[128];
    long kib = -1;
    FILE *f = fopen("/proc/meminfo", "r");
    while (f && fgets(line, sizeof(line), f))
        if (sscanf(line, "MemAvailable: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

static void handle_line(int fd, char *line)
{
    char id[64], cmd[32];
    unsigned long long a = 0, b = 0;
    int n = sscanf(line, "%63s %31s %llu %llu", id, cmd, &a, &b);
    if (n < 2) {
        if (n == 1)
            reply(fd, id, "\"ok\":false,\"error\":\"no command\"");
        return;
    }
    if (!strcmp(cmd, "ping")) {
        reply(fd, id, "\"ok\":true,\"hb\":%llu,\"pattern_mib\":%zu,"
              "\"mem_available_mib\":%ld", (unsigned long long)heartbeat,
              pattern_bytes >> 20, mem_available_kib() / 1024);
    } else if (!strcmp(cmd, "fill") && n == 4) {
        double t0 = now_ms();
        if (do_fill((size_t)a, b) < 0) {
            reply(fd, id, "\"ok\":false,\"error\":\"cannot map %llu MiB\"", a);
            return;
        }
        reply(fd, id, "\"ok\":true,\"mib\":%llu,\"seed\":%llu,"
              "\"checksum\":\"%016llx\",\"fill_ms\":%.0f", a, b,
              (unsigned long long)pattern_checksum(), now_ms() - t0);
    } else if (!strcmp(cmd, "checksum")) {
        reply(fd, id, "\"ok\":true,\"mib\":%zu,\"seed\":%llu,"
              "\"checksum\":\"%016llx\"", pattern_bytes >> 20,
              (unsigned long long)pattern_seed,
              (unsigned long long)pattern_checksum());
    } else if (!strcmp(cmd, "dirty") && n == 4 && a <= 100) {
        size_t pages = do_dirty((unsigned)a, b);
        reply(fd, id, "\"ok\":true,\"pages\":%zu", pages);
    } else if (!strcmp(cmd, "identity")) {
        do_identity(fd, id);
    } else if (!strcmp(cmd, "diskwrite") && n == 4) {
        do_disk(fd, id, 1, a, b);
    } else if (!strcmp(cmd, "diskread") && n >= 3) {
        do_disk(fd, id, 0, a, 0);
    } else {
        reply(fd, id, "\"ok\":false,\"error\":\"unknown or malformed command\"");
    }
}

/* Read what is there; run every complete line. Returns -1 on hang-up. */
static int pump(struct channel *ch)
{
    ssize_t n = read(ch->fd, ch->buf + ch->used, sizeof(ch->buf) - ch->used - 1);
    if (n <= 0)
        return (n == 0 || (errno != EAGAIN && errno != EINTR)) ? -1 : 0;
    ch->used += n;
    ch->buf[ch->used] = '\0';
    char *start = ch->buf, *nl;
    while ((nl = strchr(start, '\n'))) {
        *nl = '\0';
        if (nl > start && nl[-1] == '\r')
            nl[-1] = '\0';
        /* The console is read on stdin (opened read-only by /init) and
         * answered on stdout, like the heartbeat. */
        handle_line(ch->fd == STDIN_FILENO ? STDOUT_FILENO : ch->fd, start);
        start = nl + 1;
    }
    ch->used -= start - ch->buf;
    memmove(ch->buf, start, ch->used);
    if (ch->used == sizeof(ch->buf) - 1)
        ch->used = 0; /* an over-long line is dropped, not run */
    return 0;
}

/* The /dev node of the first device of sysfs class folder `class_dir` whose
 * entry starts with `prefix` and whose `name_file` reads `wanted`, or -1. */
static int open_device_named(const char *class_dir, const char *prefix,
                             const char *name_file, const char *wanted,
                             const char *dev_dir, int flags)
{
    DIR *d = opendir(class_dir);
    struct dirent *e;
    int fd = -1;
    while (d && (e = readdir(d))) {
        char path[300], name[128];
        if (strncmp(e->d_name, prefix, strlen(prefix)))
            continue;
        snprintf(path, sizeof(path), "%s/%s/%s", class_dir, e->d_name, name_file);
        read_first_line(path, name, sizeof(name));
        if (strcmp(name, wanted))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dev_dir, e->d_name);
        fd = open(path, flags | O_NONBLOCK | O_CLOEXEC);
        break;
    }
    if (d)
        closedir(d);
    return fd;
}

static int open_agent_port(void)
{
    return open_device_named("/sys/class/virtio-ports", "", "name", PORT_NAME, "/dev",
                             O_RDWR);
}

/* The evdev node of the ACPI power button (the kernel's button driver names
 * its input device so), or -1. */
static int open_power_button(void)
{
    return open_device_named("/sys/class/input", "event", "device/name", "Power Button",
                             "/dev/input", O_RDONLY);
}

static void on_power_button(int fd)
{
    struct input_event event;
    while (read(fd, &event, sizeof(event)) == (ssize_t)sizeof(event)) {
        if (event.type == EV_KEY && event.code == KEY_POWER && event.value == 1) {
            printf("clone-agent: power button pressed, powering off\n");
            sync();
            reboot(LINUX_REBOOT_CMD_POWER_OFF);
        }
    }
}

/* Hot-plugged NICs (a clone gets its own) are brought up by /sbin/netup.
 * They are told apart by ifindex: a new NIC may reuse an old one's name. */
static void bring_up_new_nics(void)
{
    static int seen[MAX_NICS];
    static int seen_count;
    DIR *d = opendir("/sys/class/net");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[300], index_text[16];
        int known = 0, ifindex;
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "lo"))
            continue;
        snprintf(path, sizeof(path), "/sys/class/net/%s/ifindex", e->d_name);
        read_first_line(path, index_text, sizeof(index_text));
        ifindex = atoi(index_text);
        for (int i = 0; i < seen_count; i++)
            known |= seen[i] == ifindex;
        if (known || seen_count == MAX_NICS)
            continue;
        seen[seen_count++] = ifindex;
        if (fork() == 0) {
            execl("/sbin/netup", "netup", e->d_name, (char *)NULL);
            _exit(127);
        }
    }
    if (d)
        closedir(d);
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ;
}

static void fill_from_cmdline(void)
{
    char cmdline[1024];
    unsigned long long mib, seed;
    read_first_line("/proc/cmdline", cmdline, sizeof(cmdline));
    char *opt = strstr(cmdline, "clone_agent.fill=");
    if (opt && sscanf(opt, "clone_agent.fill=%llu:%llu", &mib, &seed) == 2) {
        do_fill((size_t)mib, seed);
        printf("clone-agent filled mib=%llu seed=%llu checksum=%016llx\n", mib,
               seed, (unsigned long long)pattern_checksum());
    }
}

int main(void)
{
    struct channel console = {.fd = STDIN_FILENO};
    struct channel port = {.fd = -1};
    int power_button = open_power_button();
    double next_beat = now_ms();
    int port_hung_up = 0;

    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);
    fill_from_cmdline();

    for (;;) {
        double now = now_ms();
        if (now >= next_beat) {
            printf("clone-agent hb=%llu\n", (unsigned long long)++heartbeat);
            next_beat += 1000.0;
            if (next_beat < now) /* the VM was paused: no burst of beats */
                next_beat = now + 1000.0;
            bring_up_new_nics();
            if (port.fd < 0)
                port.fd = open_agent_port();
        }
        /* A port without a host is "readable" (read returns 0) and hung up
         * until a host connects, which poll cannot wait for: leave it out
         * and look again every HUP_RECHECK_MS. Polling it would spin the
         * vCPU (a clone's port has no host until someone connects). */
        struct pollfd fds[3] = {{.fd = console.fd, .events = POLLIN},
                                {.fd = port_hung_up ? -1 : port.fd, .events = POLLIN},
                                {.fd = power_button, .events = POLLIN}};
        int wait_ms = (int)(next_beat - now) + 1;
        if (port_hung_up) {
            if (wait_ms > HUP_RECHECK_MS)
                wait_ms = HUP_RECHECK_MS;
            port_hung_up = 0; /* look again after this wait */
        }
        if (poll(fds, 3, wait_ms) < 0)
            continue;
        if (fds[2].revents & POLLIN)
            on_power_button(power_button);
        if (fds[0].revents & POLLIN)
            pump(&console);
        /* What a host wrote before it went is still read: hung up is only
         * a port that reads nothing. */
        if (fds[1].revents & POLLIN) {
            if (pump(&port) < 0)
                port_hung_up = 1;
        } else if (fds[1].revents & POLLHUP) {
            port_hung_up = 1;
        }
    }
}
