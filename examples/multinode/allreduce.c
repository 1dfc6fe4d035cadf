/* An MPI all-reduce that every rank checks: each process adds rank + 1, all must see n(n+1)/2.
   Each process prints the IPv4 address of its own network interface, so the output shows which
   machine (or local network namespace) it ran on. An optional argument: seconds to sleep after. */
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <mpi.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void own_address(char *out, size_t size) {
    struct ifaddrs *list, *item;
    snprintf(out, size, "none");
    if (getifaddrs(&list) != 0) return;
    for (item = list; item; item = item->ifa_next) {
        if (!item->ifa_addr || item->ifa_addr->sa_family != AF_INET) continue;
        if (strcmp(item->ifa_name, "lo") == 0) continue;
        inet_ntop(AF_INET, &((struct sockaddr_in *)item->ifa_addr)->sin_addr, out, size);
        break;
    }
    freeifaddrs(list);
}

int main(int argc, char **argv) {
    int rank, size, sum;
    char address[64];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int value = rank + 1, expected = size * (size + 1) / 2;
    MPI_Allreduce(&value, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    own_address(address, sizeof address);
    printf("rank %d of %d at %s: sum %d %s\n", rank, size, address, sum, sum == expected ? "ok" : "WRONG");
    fflush(stdout);
    if (argc > 1) sleep((unsigned)atoi(argv[1]));
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Finalize();
    return sum == expected ? 0 : 1;
}
