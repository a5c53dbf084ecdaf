// Probe (not part of the build): two processes on CPUs 0 and 1 hand a buffer in shared memory back and forth.
// In each turn, one copies the other's buffer out and then rewrites its own, the data movement of a
// 2-rank all-reduce over shared memory. Prints the rate per 0.25 s window. Usage (MiB, seconds):
//   gcc -O2 -o /tmp/handoff bench/cpu_handoff_probe.c && /tmp/handoff 4 40
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sched.h>
#include <unistd.h>
#include <sys/mman.h>
#include <stdatomic.h>
#include <sys/wait.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int c,char**v){size_t N=(size_t)atoi(v[1])<<20; double dur=atof(v[2]);
 char* shm=mmap(0,2*N+4096,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0); memset(shm,0,2*N+4096);
 _Atomic long* turn=(_Atomic long*)(shm+2*N);
 int me = fork()==0 ? 1 : 0;
 cpu_set_t cs; CPU_ZERO(&cs); CPU_SET(me,&cs); sched_setaffinity(0,sizeof cs,&cs);
 char* mine=shm+me*N; char* other=shm+(1-me)*N; char* priv=malloc(N); memset(priv,3,N);
 double t0=now(), next=t0+0.25; int n=0; double acc_t=now();
 while(1){
   long r;
   while((r=atomic_load(turn))>=0 && r%2!=me) ; // wait for my turn (or the end: -1)
   if(r<0) break;                                   // then copy the peer's buffer out and write mine
   memcpy(priv,other,N); memset(mine,(int)r,N);
   if(me==0 && now()-t0>dur){atomic_store(turn,-1); break;}
   atomic_store(turn,r+1); n++;
   if(me==0 && now()>=next){double t=now(); printf("%6.2f s: %6.1f GB/s (peer copy+write, %d rounds)\n",t-t0, 2.0*N*n/(t-acc_t)/1e9, n); n=0; acc_t=t; next=t+0.25;}
 }
 if(me==0) wait(NULL);
 return 0;}
